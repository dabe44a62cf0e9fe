package interop

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	proto "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// serverFirstPacketOrder drives one Proxy stream by hand, with the library's
// own generated gRPC client, against a target that writes 1 MiB as soon as
// it accepts and then closes. It checks the order of what the server sends:
// DIAL_RSP (same random, non-zero connectID) before any DATA, every byte in
// DATA for that connectID, then CLOSE_RSP last.
//
// Why by hand: the library's tunnel hands DIAL_RSP to DialContext and goes
// on reading; DATA that arrives before DialContext has registered the
// connection is dropped ("Connection not recognized") and answered with
// CLOSE_REQ. That is a client race, so a server-speaks-first target cannot
// be tested through the tunnel reliably; this test shows what konnq sends.
func serverFirstPacketOrder(t *testing.T) {
	h := Start(t, Options{})
	payload := RandomBytes(1<<20, 13)
	target := ServeTarget(t, func(c net.Conn) {
		defer c.Close()
		_ = WriteChunks(c, payload, 16<<10)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := grpc.DialContext(ctx, h.Socket, UDSDialOption(h.Socket), grpc.WithBlock(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stream, err := proto.NewProxyServiceClient(cc).Proxy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const random = 4242
	err = stream.Send(&proto.Packet{
		Type:    proto.PacketType_DIAL_REQ,
		Payload: &proto.Packet_DialRequest{DialRequest: &proto.DialRequest{Protocol: "tcp", Address: target.Addr, Random: random}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, order, err := readUntilCloseRsp(stream, random)
	t.Logf("server sent %s", order)
	if err != nil {
		t.Fatal(err)
	}
	SameBytes(t, "DATA before CLOSE_RSP", got, payload)
	_ = stream.CloseSend()
	h.WaitIdle(t, idleBound)
}

// readUntilCloseRsp checks the packet order and returns the DATA bytes plus
// a summary of the packet sequence.
func readUntilCloseRsp(stream proto.ProxyService_ProxyClient, random int64) ([]byte, string, error) {
	var got []byte
	var connID int64
	dataPackets := 0
	for {
		pkt, err := stream.Recv()
		summary := fmt.Sprintf("DIAL_RSP(connectID=%d), %d DATA packets (%d bytes)", connID, dataPackets, len(got))
		if err == io.EOF {
			return got, summary, fmt.Errorf("stream ended without CLOSE_RSP")
		}
		if err != nil {
			return got, summary, fmt.Errorf("recv: %w", err)
		}
		switch {
		case connID == 0 && pkt.Type != proto.PacketType_DIAL_RSP:
			return got, summary, fmt.Errorf("first packet is %v, want DIAL_RSP", pkt.Type)
		case pkt.Type == proto.PacketType_DIAL_RSP:
			r := pkt.GetDialResponse()
			if connID != 0 || r.Random != random || r.ConnectID == 0 || r.Error != "" {
				return got, summary, fmt.Errorf("bad DIAL_RSP %v (after connectID %d)", r, connID)
			}
			connID = r.ConnectID
		case pkt.Type == proto.PacketType_DATA:
			d := pkt.GetData()
			if d.ConnectID != connID {
				return got, summary, fmt.Errorf("DATA for connectID %d, want %d", d.ConnectID, connID)
			}
			got = append(got, d.Data...)
			dataPackets++
		case pkt.Type == proto.PacketType_CLOSE_RSP:
			if r := pkt.GetCloseResponse(); r.ConnectID != connID {
				return got, summary, fmt.Errorf("CLOSE_RSP for connectID %d, want %d", r.ConnectID, connID)
			}
			return got, summary + ", CLOSE_RSP", nil
		default:
			return got, summary, fmt.Errorf("unexpected %v", pkt.Type)
		}
	}
}
