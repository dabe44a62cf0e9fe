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
	stream := rawStream(t, h)
	const random = 4242
	err := stream.Send(&proto.Packet{
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

// rawStream opens one Proxy stream with the library's generated client, on
// its own HTTP/2 connection, closed when the test ends.
func rawStream(t *testing.T, h *Harness) proto.ProxyService_ProxyClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	cc, err := grpc.DialContext(ctx, h.Socket, UDSDialOption(h.Socket), grpc.WithBlock(),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	stream, err := proto.NewProxyServiceClient(cc).Proxy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// clientCloseHandshake checks on the wire what conn.Close() relies on:
// after CLOSE_REQ{connectID} the server answers CLOSE_RSP{connectID} with an
// empty error, nothing after it but the end of the stream. (conn.Close()
// itself may return "tunnel closed" instead of nil when CLOSE_RSP and the
// end of the tunnel arrive before it selects: a client race.)
func clientCloseHandshake(t *testing.T) {
	h := Start(t, Options{})
	target := EchoTarget(t)
	stream := rawStream(t, h)
	const random = 77
	send := func(p *proto.Packet) {
		t.Helper()
		if err := stream.Send(p); err != nil {
			t.Fatalf("send %v: %v", p.Type, err)
		}
	}
	send(&proto.Packet{Type: proto.PacketType_DIAL_REQ, Payload: &proto.Packet_DialRequest{
		DialRequest: &proto.DialRequest{Protocol: "tcp", Address: target.Addr, Random: random}}})
	pkt, err := stream.Recv()
	if err != nil || pkt.Type != proto.PacketType_DIAL_RSP || pkt.GetDialResponse().ConnectID == 0 {
		t.Fatalf("want DIAL_RSP, got %v, %v", pkt, err)
	}
	id := pkt.GetDialResponse().ConnectID
	send(&proto.Packet{Type: proto.PacketType_DATA, Payload: &proto.Packet_Data{Data: &proto.Data{ConnectID: id, Data: []byte("ping")}}})
	if pkt, err := stream.Recv(); err != nil || pkt.Type != proto.PacketType_DATA || string(pkt.GetData().Data) != "ping" {
		t.Fatalf("want DATA ping, got %v, %v", pkt, err)
	}
	start := time.Now()
	send(&proto.Packet{Type: proto.PacketType_CLOSE_REQ, Payload: &proto.Packet_CloseRequest{CloseRequest: &proto.CloseRequest{ConnectID: id}}})
	pkt, err = stream.Recv()
	if err != nil || pkt.Type != proto.PacketType_CLOSE_RSP {
		t.Fatalf("after CLOSE_REQ: want CLOSE_RSP, got %v, %v", pkt, err)
	}
	if r := pkt.GetCloseResponse(); r.ConnectID != id || r.Error != "" {
		t.Errorf("CLOSE_RSP = %v, want connectID %d and no error", r, id)
	}
	t.Logf("CLOSE_RSP %v after CLOSE_REQ", time.Since(start).Round(time.Microsecond))
	_ = stream.CloseSend()
	if pkt, err := stream.Recv(); err != io.EOF {
		t.Errorf("after CLOSE_RSP: got %v, %v; want the end of the stream", pkt, err)
	}
	h.WaitIdle(t, idleBound)
}
