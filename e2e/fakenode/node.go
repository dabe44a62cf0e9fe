package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// Config configures a fake node. A port of 0 picks an ephemeral port.
type Config struct {
	Addr        string   // IP to listen on; also the node's name in /hello and the first SAN
	HTTPPort    int      // plain HTTP server
	KubeletPort int      // HTTPS kubelet-like server
	WebhookPort int      // HTTPS admission webhook server
	CertDir     string   // where ca.crt, server.crt and server.key are written
	SANs        []string // extra DNS names or IPs for the serving certificate
	Log         io.Writer
}

// Node is a running fake node.
type Node struct {
	HTTPAddr    string // host:port actually bound
	KubeletAddr string
	WebhookAddr string
	CAFile      string

	webhook *webhook
	stop    context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	err     error
}

// Run binds all listeners, writes the certificates and starts serving. It
// returns once every listener is bound; the servers stop when ctx is done or
// when one of them fails (see Err). Port-forward requests to the kubelet
// server are connected to Addr:port, so they reach the plain HTTP server.
func Run(ctx context.Context, cfg Config) (*Node, error) {
	if net.ParseIP(cfg.Addr) == nil {
		return nil, fmt.Errorf("--addr %q is not an IP address", cfg.Addr)
	}
	if cfg.CertDir == "" {
		return nil, errors.New("--cert-dir is required")
	}
	logw := cfg.Log
	if logw == nil {
		logw = os.Stderr
	}
	logger := log.New(logw, "fakenode: ", log.LstdFlags|log.Lmicroseconds)

	cert, err := writeCerts(cfg.CertDir, append([]string{cfg.Addr}, cfg.SANs...))
	if err != nil {
		return nil, fmt.Errorf("writing certificates: %w", err)
	}
	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}

	ctx, cancel := context.WithCancel(ctx)
	var lc net.ListenConfig
	listen := func(port int) (net.Listener, error) {
		return lc.Listen(ctx, "tcp", net.JoinHostPort(cfg.Addr, strconv.Itoa(port)))
	}
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	for _, port := range []int{cfg.HTTPPort, cfg.KubeletPort, cfg.WebhookPort} {
		l, err := listen(port)
		if err != nil {
			closeAll()
			cancel()
			return nil, err
		}
		listeners = append(listeners, l)
	}

	n := &Node{
		HTTPAddr:    listeners[0].Addr().String(),
		KubeletAddr: listeners[1].Addr().String(),
		WebhookAddr: listeners[2].Addr().String(),
		CAFile:      filepath.Join(cfg.CertDir, "ca.crt"),
		webhook:     &webhook{},
		stop:        cancel,
		done:        make(chan struct{}),
	}
	httpMux := http.NewServeMux()
	addCommonHandlers(httpMux, cfg.Addr)

	servers := []struct {
		name    string
		handler http.Handler
		tls     bool
	}{
		{"http", httpMux, false},
		{"kubelet", kubeletHandler(cfg.Addr, cfg.Addr), true},
		{"webhook", n.webhook.handler(), true},
	}
	var wg sync.WaitGroup
	var srvs []*http.Server
	for i, s := range servers {
		srv := &http.Server{
			Handler:           logRequests(logger, s.name, s.handler),
			ReadHeaderTimeout: 30 * time.Second,
			ErrorLog:          logger,
			BaseContext:       func(net.Listener) context.Context { return ctx },
		}
		if s.tls {
			srv.TLSConfig = tlsConfig.Clone()
		}
		srvs = append(srvs, srv)
		l := listeners[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if s.tls {
				err = srv.ServeTLS(l, "", "")
			} else {
				err = srv.Serve(l)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				n.setErr(fmt.Errorf("%s server: %w", s.name, err))
				cancel()
			}
		}()
	}

	go func() {
		<-ctx.Done()
		for _, srv := range srvs {
			srv.Close()
		}
		wg.Wait()
		close(n.done)
	}()
	return n, nil
}

func (n *Node) setErr(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err == nil {
		n.err = err
	}
}

// Close stops all servers and waits for them to finish.
func (n *Node) Close() {
	n.stop()
	<-n.done
}

// Done is closed once all servers have stopped.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err reports the first unexpected server error, if any.
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// WebhookCount is the number of admission reviews answered.
func (n *Node) WebhookCount() int64 { return n.webhook.count.Load() }
