package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

const (
	streamIdleTimeout     = time.Hour
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
)

// kubeletHandler serves the subset of the kubelet API that kube-apiserver
// uses for node proxy, pods/exec and pods/portforward.
func kubeletHandler(addr string, forwardHost string) http.Handler {
	mux := http.NewServeMux()
	addCommonHandlers(mux, addr)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})

	k := &fakeKubelet{forwardHost: forwardHost}
	mux.HandleFunc("/exec/{ns}/{pod}/{container}", k.serveExec)
	mux.HandleFunc("/exec/{ns}/{pod}/{uid}/{container}", k.serveExec)
	mux.HandleFunc("/portForward/{ns}/{pod}", k.servePortForward)
	mux.HandleFunc("/portForward/{ns}/{pod}/{uid}", k.servePortForward)
	return mux
}

type fakeKubelet struct {
	forwardHost string
}

func (k *fakeKubelet) serveExec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "missing command", http.StatusBadRequest)
		return
	}
	pod := r.PathValue("ns") + "/" + r.PathValue("pod")
	remotecommand.ServeExec(w, r, executor{}, pod, r.PathValue("uid"), r.PathValue("container"), cmd, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *fakeKubelet) servePortForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pod := r.PathValue("ns") + "/" + r.PathValue("pod")
	portforward.ServePortForward(w, r, k, pod, r.PathValue("uid"), opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// PortForward connects the stream to forwardHost:port.
func (k *fakeKubelet) PortForward(ctx context.Context, name, uid string, port int32, s io.ReadWriteCloser) error {
	defer s.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(k.forwardHost, strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}
	defer conn.Close()

	errc := make(chan error, 2)
	go func() {
		_, err := io.Copy(conn, s)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		errc <- err
	}()
	go func() {
		_, err := io.Copy(s, conn)
		s.Close()
		errc <- err
	}()
	var firstErr error
	for range 2 {
		select {
		case err := <-errc:
			if firstErr == nil {
				firstErr = err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return firstErr
}

// executor implements the commands understood by fakenode's exec:
//
//	cat         copies stdin to stdout until stdin is closed
//	echo ARGS   writes ARGS joined by spaces and a newline to stdout
//
// Any other command writes a message to stderr and exits with code 127.
type executor struct{}

func (executor) ExecInContainer(ctx context.Context, name, uid, container string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	if resize != nil {
		go func() {
			for range resize {
			}
		}()
	}
	if errOut == nil && tty {
		errOut = out
	}
	stdout := io.Writer(io.Discard)
	if out != nil {
		stdout = out
	}
	stderr := io.Writer(io.Discard)
	if errOut != nil {
		stderr = errOut
	}
	closeOutputs := func() {
		if out != nil {
			out.Close()
		}
		if errOut != nil && errOut != out {
			errOut.Close()
		}
	}
	defer closeOutputs()

	switch cmd[0] {
	case "cat":
		if in == nil {
			return nil
		}
		_, err := io.Copy(stdout, in)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	case "echo":
		_, err := io.WriteString(stdout, strings.Join(cmd[1:], " ")+"\n")
		return err
	default:
		fmt.Fprintf(stderr, "fakenode: %s: command not found\n", cmd[0])
		return utilexec.CodeExitError{Err: fmt.Errorf("%s: command not found", cmd[0]), Code: 127}
	}
}
