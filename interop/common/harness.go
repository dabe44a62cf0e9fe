// Package interop starts a real konnq-server and konnq-agent and drives them
// with the real konnectivity-client library, the one compiled into
// kube-apiserver. The version of that library is chosen by the module that
// imports this package (see ../kc031, ../kc036, ../kc037): this module only
// states the oldest version it compiles against, and Go's minimal version
// selection picks the importing module's version.
package interop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Harness is one konnq-server plus one konnq-agent connected to it, all on
// loopback, killed when the test ends.
type Harness struct {
	// Socket is the server's Unix socket, kube-apiserver's egress udsName
	// (not served with Options.TCPFrontend).
	Socket string
	// TCPAddr is the server's TCP frontend ("127.0.0.1:port", mutual TLS),
	// set when Options.TCPFrontend is.
	TCPAddr string
	// PKI is the directory `konnq-server certs` wrote: ca.crt,
	// server.crt/key (also the TCP frontend's), agent.crt/key (a client
	// certificate, usable as kube-apiserver's).
	PKI string
	// ServerAdmin and AgentAdmin are the base URLs of the /metrics endpoints
	// (AgentAdmin is empty with Options.NoAgent).
	ServerAdmin string
	AgentAdmin  string
	server      *process
	agent       *process
}

// Options tunes the processes for one test; the zero value is the defaults.
type Options struct {
	// AgentDialTimeout is the agent's --dial-timeout (TCP dial to a target).
	AgentDialTimeout time.Duration
	// BackendDialTimeout is the server's --backend-dial-timeout.
	BackendDialTimeout time.Duration
	// Mode is the server's --mode ("grpc" when empty, or "http-connect");
	// it applies to the Unix socket and to the TCP frontend.
	Mode string
	// TCPFrontend serves the frontend on TCP instead of the Unix socket
	// (upstream refuses both at once): --server-port on 127.0.0.1 with
	// --server-cert/--server-key (the PKI's server pair) and
	// --server-ca-cert (the PKI's CA), so clients need a certificate of it.
	TCPFrontend bool
	// NoAgent starts no agent; Start returns once the server is healthy.
	NoAgent bool
	// EnableProfiling passes --enable-profiling to the server and the agent:
	// /debug/pprof/ on their admin ports (ServerAdmin, AgentAdmin).
	EnableProfiling bool
}

const readyBound = 20 * time.Second

// Start runs `konnq-server certs`, then the server and the agent, and returns
// once the server's /readyz says 200 (an agent is connected; with NoAgent,
// once its /healthz does). Ports are picked free and then handed over, so
// another process on the machine may take one in between: if a process exits
// before readiness, Start retries with new ports (at most 3 attempts).
func Start(t *testing.T, opts Options) *Harness {
	t.Helper()
	bin := binDir(t)
	// A short directory: a Unix socket path must fit in 108 bytes, and
	// t.TempDir() embeds the (long) test name.
	dir, err := os.MkdirTemp("", "konnq-interop-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	writeCerts(t, bin, filepath.Join(dir, "pki"))
	for attempt := 1; ; attempt++ {
		start := time.Now()
		h, err := launch(t, bin, dir, opts, attempt)
		if err == nil {
			what := "server and agent"
			if opts.NoAgent {
				what = "server (no agent)"
			}
			t.Logf("%s ready in %v", what, time.Since(start).Round(time.Millisecond))
			return h
		}
		if !errors.Is(err, errUnexpectedExit) || attempt == 3 {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
		t.Logf("attempt %d: %v; retrying with other ports", attempt, err)
	}
}

// launch starts the server and the agent on freshly picked ports and waits
// for readiness.
func launch(t *testing.T, bin, dir string, opts Options, attempt int) (*Harness, error) {
	pki := func(name string) string { return filepath.Join(dir, "pki", name) }
	h := &Harness{Socket: filepath.Join(dir, "konnq.sock"), PKI: filepath.Join(dir, "pki")}
	agentPort := freeUDPPort(t)
	healthPort, adminPort := freeTCPPort(t), freeTCPPort(t)
	serverArgs := []string{
		"--agent-port", strconv.Itoa(agentPort),
		"--agent-bind-address", "127.0.0.1",
		"--health-port", strconv.Itoa(healthPort),
		"--health-bind-address", "127.0.0.1",
		"--admin-port", strconv.Itoa(adminPort),
		"--admin-bind-address", "127.0.0.1",
		"--cluster-cert", pki("server.crt"),
		"--cluster-key", pki("server.key"),
		"--cluster-ca-cert", pki("ca.crt"),
		"--graceful-shutdown-timeout", "1s",
	}
	if opts.BackendDialTimeout > 0 {
		serverArgs = append(serverArgs, "--backend-dial-timeout", opts.BackendDialTimeout.String())
	}
	if opts.Mode != "" {
		serverArgs = append(serverArgs, "--mode", opts.Mode)
	}
	if opts.EnableProfiling {
		serverArgs = append(serverArgs, "--enable-profiling")
	}
	if opts.TCPFrontend {
		port := freeTCPPort(t)
		h.TCPAddr = fmt.Sprintf("127.0.0.1:%d", port)
		serverArgs = append(serverArgs,
			"--server-port", strconv.Itoa(port),
			"--server-bind-address", "127.0.0.1",
			"--server-cert", pki("server.crt"),
			"--server-key", pki("server.key"),
			"--server-ca-cert", pki("ca.crt"),
		)
	} else {
		serverArgs = append(serverArgs, "--uds-name", h.Socket)
	}
	h.server = startProcess(t, dir, filepath.Join(bin, "konnq-server"), serverArgs, attempt)
	h.ServerAdmin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)
	// Start the agent once the server listens, so that its first connection
	// attempt is not refused (it would retry only after --sync-interval).
	if err := h.waitReady(fmt.Sprintf("http://127.0.0.1:%d/healthz", healthPort)); err != nil {
		return nil, h.abandon(err)
	}
	if opts.NoAgent {
		return h, nil
	}

	agentHealth, agentAdmin := freeTCPPort(t), freeTCPPort(t)
	agentArgs := []string{
		"--proxy-server-host", "127.0.0.1",
		"--proxy-server-port", strconv.Itoa(agentPort),
		"--ca-cert", pki("ca.crt"),
		"--agent-cert", pki("agent.crt"),
		"--agent-key", pki("agent.key"),
		"--health-server-port", strconv.Itoa(agentHealth),
		"--health-bind-address", "127.0.0.1",
		"--admin-server-port", strconv.Itoa(agentAdmin),
		"--admin-bind-address", "127.0.0.1",
	}
	if opts.AgentDialTimeout > 0 {
		agentArgs = append(agentArgs, "--dial-timeout", opts.AgentDialTimeout.String())
	}
	if opts.EnableProfiling {
		agentArgs = append(agentArgs, "--enable-profiling")
	}
	transport := os.Getenv("KONNQ_AGENT_TRANSPORT")
	if transport != "" {
		agentArgs = append(agentArgs, "--transport", transport)
	}
	h.agent = startProcess(t, dir, filepath.Join(bin, "konnq-agent"), agentArgs, attempt)
	h.AgentAdmin = fmt.Sprintf("http://127.0.0.1:%d", agentAdmin)

	if err := h.waitReady(fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort)); err != nil {
		return nil, h.abandon(err)
	}
	if transport == "tcp" {
		if err := h.onTCP(); err != nil {
			return nil, h.abandon(err)
		}
	}
	return h, nil
}

// onTCP checks that the agent's one server connection is over TCP
// (KONNQ_AGENT_TRANSPORT=tcp runs every scenario over that transport).
func (h *Harness) onTCP() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	text, err := Metrics(ctx, h.AgentAdmin)
	if err != nil {
		return err
	}
	n, err := MetricValue(text, `konnq_agent_server_connections{transport="tcp"}`)
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("KONNQ_AGENT_TRANSPORT=tcp, but the agent has %v server connections over TCP", n)
	}
	return nil
}

// WriteCerts runs `konnq-server certs --dir dir`: a CA plus server and agent
// pairs of their own (for a second, unrelated CA).
func WriteCerts(t *testing.T, dir string) {
	t.Helper()
	writeCerts(t, binDir(t), dir)
}

func writeCerts(t *testing.T, bin, dir string) {
	t.Helper()
	certs := exec.Command(filepath.Join(bin, "konnq-server"), "certs", "--dir", dir)
	if out, err := certs.CombinedOutput(); err != nil {
		t.Fatalf("konnq-server certs: %v\n%s", err, out)
	}
}

// abandon stops the processes of a failed attempt and adds their logs to err.
func (h *Harness) abandon(err error) error {
	for _, p := range []*process{h.server, h.agent} {
		if p == nil {
			continue
		}
		p.abandon()
		logs, _ := os.ReadFile(p.log)
		err = fmt.Errorf("%w\n---- %s log ----\n%s", err, p.name, tail(logs, 4<<10))
	}
	return err
}

// waitReady polls url until it answers 200; it gives up after readyBound or
// as soon as a process exits (errUnexpectedExit).
func (h *Harness) waitReady(url string) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyBound)
	for time.Now().Before(deadline) {
		if err := h.alive(); err != nil {
			return fmt.Errorf("before readiness: %w", err)
		}
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s not 200 within %v", url, readyBound)
}

// process is a child process whose output goes to a log file, dumped into the
// test log if the test fails.
type process struct {
	name      string
	cmd       *exec.Cmd
	log       string
	exited    chan struct{}
	err       error
	abandoned bool
}

func startProcess(t *testing.T, dir, path string, args []string, attempt int) *process {
	t.Helper()
	p := &process{name: filepath.Base(path), exited: make(chan struct{})}
	p.log = filepath.Join(dir, fmt.Sprintf("%s-%d.log", p.name, attempt))
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", path, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	// Registered after the directory's RemoveAll, so it runs before it.
	t.Cleanup(func() { p.stop(t) })
	return p
}

// abandon kills a process of a failed start attempt.
func (p *process) abandon() {
	p.abandoned = true
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// stop sends SIGTERM, then SIGKILL if the process is still there after 3 s.
// A process that exited by itself during the test fails the test.
func (p *process) stop(t *testing.T) {
	if p.abandoned {
		return
	}
	select {
	case <-p.exited:
		t.Errorf("%s exited during the test: %v", p.name, p.err)
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
			if p.err != nil {
				t.Logf("%s after SIGTERM: %v", p.name, p.err)
			}
		case <-time.After(3 * time.Second):
			t.Logf("%s ignored SIGTERM for 3s; killing it", p.name)
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	if t.Failed() || os.Getenv("KONNQ_INTEROP_LOGS") != "" {
		logs, _ := os.ReadFile(p.log)
		t.Logf("---- %s log (last 8 KiB) ----\n%s", p.name, tail(logs, 8<<10))
	}
}

func tail(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	b = b[len(b)-n:]
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return b
}

// binDir finds konnq-server and konnq-agent: $KONNQ_BIN_DIR, else
// target/release of the nearest enclosing directory that has one.
func binDir(t *testing.T) string {
	t.Helper()
	have := func(d string) bool {
		for _, b := range []string{"konnq-server", "konnq-agent"} {
			if st, err := os.Stat(filepath.Join(d, b)); err != nil || st.IsDir() {
				return false
			}
		}
		return true
	}
	if d := os.Getenv("KONNQ_BIN_DIR"); d != "" {
		abs, _ := filepath.Abs(d)
		if !have(abs) {
			t.Fatalf("KONNQ_BIN_DIR=%s does not contain konnq-server and konnq-agent", d)
		}
		return abs
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if cand := filepath.Join(d, "target", "release"); have(cand) {
			return cand
		}
		if filepath.Dir(d) == d {
			break
		}
	}
	t.Fatalf("no target/release/konnq-{server,agent} above %s: run `cargo build --release -p konnq-server -p konnq-agent` "+
		"at the repo root (interop/run.sh does) or set KONNQ_BIN_DIR", wd)
	return ""
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// errUnexpectedExit is returned by alive when a process has exited.
var errUnexpectedExit = errors.New("process exited")

// alive reports an error if a started process has exited.
func (h *Harness) alive() error {
	for _, p := range []*process{h.server, h.agent} {
		if p == nil {
			continue
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s: %w: %v", p.name, errUnexpectedExit, p.err)
		default:
		}
	}
	return nil
}
