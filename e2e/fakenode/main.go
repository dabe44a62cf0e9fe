// Command fakenode pretends to be a Kubernetes node for konnq's end-to-end
// tests: a plain HTTP server, a kubelet-like HTTPS server (node proxy, exec,
// port-forward) and an HTTPS validating admission webhook, all on one IP.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var cfg Config
	var sans stringList
	flag.StringVar(&cfg.Addr, "addr", "", "IP address to listen on (required)")
	flag.IntVar(&cfg.HTTPPort, "http-port", 8080, "plain HTTP port")
	flag.IntVar(&cfg.KubeletPort, "kubelet-port", 10250, "kubelet HTTPS port")
	flag.IntVar(&cfg.WebhookPort, "webhook-port", 8443, "admission webhook HTTPS port")
	flag.StringVar(&cfg.CertDir, "cert-dir", "", "directory to write ca.crt, server.crt and server.key into (required)")
	flag.Var(&sans, "san", "extra DNS name or IP for the serving certificate (repeatable)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fakenode: unexpected arguments: %q\n", flag.Args())
		os.Exit(2)
	}
	cfg.SANs = sans
	cfg.Log = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	node, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakenode: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "fakenode: http %s, kubelet %s, webhook %s, CA %s\n",
		node.HTTPAddr, node.KubeletAddr, node.WebhookAddr, node.CAFile)
	fmt.Println("fakenode ready")
	<-node.Done()
	if err := node.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "fakenode: %v\n", err)
		os.Exit(1)
	}
}
