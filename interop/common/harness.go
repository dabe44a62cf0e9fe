// Package interop starts a real konnq-server and konnq-agent and drives them
// with the real konnectivity-client library, the one compiled into
// kube-apiserver. The version of that library is chosen by the module that
// imports this package (see ../v031, ../v036, ../v037): this module only
// states the oldest version it compiles against, and Go's minimal version
// selection picks the importing module's version.
package interop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Harness is one konnq-server plus one konnq-agent connected to it, all on
// loopback, killed when the test ends.
type Harness struct {
	// Socket is the server's Unix socket, kube-apiserver's egress udsName.
	Socket string
	// ServerAdmin and AgentAdmin are the base URLs of the /metrics endpoints.
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
}

const readyBound = 20 * time.Second

// Start runs `konnq-server certs`, then the server and the agent, and returns
// once the server's /readyz says 200 (an agent is connected).
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

	certs := exec.Command(filepath.Join(bin, "konnq-server"), "certs", "--dir", filepath.Join(dir, "pki"))
	if out, err := certs.CombinedOutput(); err != nil {
		t.Fatalf("konnq-server certs: %v\n%s", err, out)
	}
	pki := func(name string) string { return filepath.Join(dir, "pki", name) }

	h := &Harness{Socket: filepath.Join(dir, "konnq.sock")}
	agentPort := freeUDPPort(t)
	healthPort, adminPort := freeTCPPort(t), freeTCPPort(t)
	serverArgs := []string{
		"--uds-name", h.Socket,
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
	h.server = startProcess(t, dir, filepath.Join(bin, "konnq-server"), serverArgs)
	h.ServerAdmin = fmt.Sprintf("http://127.0.0.1:%d", adminPort)

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
	h.agent = startProcess(t, dir, filepath.Join(bin, "konnq-agent"), agentArgs)
	h.AgentAdmin = fmt.Sprintf("http://127.0.0.1:%d", agentAdmin)

	start := time.Now()
	h.waitReady(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort))
	t.Logf("server and agent ready in %v", time.Since(start).Round(time.Millisecond))
	return h
}

// waitReady polls url until it answers 200, failing (with both processes'
// logs) after readyBound or as soon as a process exits.
func (h *Harness) waitReady(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyBound)
	for time.Now().Before(deadline) {
		for _, p := range []*process{h.server, h.agent} {
			select {
			case <-p.exited:
				t.Fatalf("%s exited before readiness: %v", p.name, p.err)
			default:
			}
		}
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not 200 within %v", url, readyBound)
}

// process is a child process whose output goes to a log file, dumped into the
// test log if the test fails.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error
}

func startProcess(t *testing.T, dir, path string, args []string) *process {
	t.Helper()
	p := &process{name: filepath.Base(path), exited: make(chan struct{})}
	p.log = filepath.Join(dir, p.name+".log")
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

// stop sends SIGTERM, then SIGKILL if the process is still there after 3 s.
func (p *process) stop(t *testing.T) {
	select {
	case <-p.exited:
		t.Errorf("%s exited during the test: %v", p.name, p.err)
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
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

// Metrics scrapes base+"/metrics".
func Metrics(ctx context.Context, base string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s/metrics: %s", base, resp.Status)
	}
	return string(body), nil
}

// MetricValue returns the value of the sample whose series (name plus
// labels, exactly as exposed) is series. A missing series is an error, so a
// renamed metric cannot pass as zero.
func MetricValue(text, series string) (float64, error) {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, series+" ") {
			continue
		}
		fields := strings.Fields(line[len(series):])
		if len(fields) == 0 {
			break
		}
		return strconv.ParseFloat(fields[0], 64)
	}
	return 0, fmt.Errorf("series %s not exposed", series)
}

// Gauges are the series that count live state; all are zero when nothing is
// in flight.
var (
	ServerGauges = []string{
		"konnectivity_network_proxy_server_pending_backend_dials",
		"konnectivity_network_proxy_server_established_connections",
		"konnectivity_network_proxy_server_grpc_connections",
	}
	AgentGauges = []string{
		"konnectivity_network_proxy_agent_pending_dials",
		"konnectivity_network_proxy_agent_open_endpoint_connections",
	}
)

// Snapshot reads every gauge of both processes.
func (h *Harness) Snapshot(ctx context.Context) (map[string]float64, error) {
	out := map[string]float64{}
	for base, names := range map[string][]string{h.ServerAdmin: ServerGauges, h.AgentAdmin: AgentGauges} {
		text, err := Metrics(ctx, base)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			v, err := MetricValue(text, n)
			if err != nil {
				return nil, err
			}
			out[n] = v
		}
	}
	return out, nil
}

// WaitGauges polls both /metrics until every gauge in want has its value,
// failing after bound with the last values seen. It returns how long it took.
func (h *Harness) WaitGauges(t *testing.T, want map[string]float64, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last map[string]float64
	var lastErr error
	for time.Since(start) < bound {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		last, lastErr = h.Snapshot(ctx)
		cancel()
		if lastErr == nil && matches(last, want) {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if lastErr != nil {
		t.Fatalf("gauges: %v", lastErr)
	}
	t.Fatalf("gauges did not reach %v within %v; last seen %v", want, bound, last)
	return 0
}

// WaitIdle waits until nothing is pending or open on the server or the agent.
func (h *Harness) WaitIdle(t *testing.T, bound time.Duration) time.Duration {
	t.Helper()
	want := map[string]float64{}
	for _, n := range append(append([]string{}, ServerGauges...), AgentGauges...) {
		want[n] = 0
	}
	return h.WaitGauges(t, want, bound)
}

func matches(got, want map[string]float64) bool {
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			return false
		}
	}
	return true
}

// errUnexpectedExit is returned by Alive when a process has exited.
var errUnexpectedExit = errors.New("process exited")

// Alive reports an error if the server or the agent has exited.
func (h *Harness) Alive() error {
	for _, p := range []*process{h.server, h.agent} {
		select {
		case <-p.exited:
			return fmt.Errorf("%s: %w: %v", p.name, errUnexpectedExit, p.err)
		default:
		}
	}
	return nil
}
