package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// failBound is how long the apiserver may take to report a failed dial or a
// broken tunnel: konnq's backend dial timeout (10 s) and its dead-agent
// detection (quic idle timeout, 5 s) with margin. A request that is still
// pending after it counts as hung.
const failBound = 20 * time.Second

// expectFailure GETs path and expects a prompt non-200 answer; it returns
// the answer's text, which the note quotes.
func (s *scenarios) expectFailure(t *testing.T, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, failBound+10*time.Second)
	defer cancel()
	start := time.Now()
	code, body, err := s.a.get(ctx, path)
	elapsed := time.Since(start)
	if err == nil && code == 200 {
		t.Fatalf("GET %s succeeded: %.200s", path, body)
	}
	if elapsed > failBound {
		t.Fatalf("GET %s took %v to fail (bound %v)", path, elapsed, failBound)
	}
	text := fmt.Sprintf("%d after %v: %s", code, elapsed.Round(time.Millisecond), strings.TrimSpace(string(body)))
	if err != nil {
		text = fmt.Sprintf("error after %v: %v", elapsed.Round(time.Millisecond), err)
	}
	return text
}

// badTargets: a closed port, a name that does not resolve and an address no
// agent can reach each give the apiserver a prompt error; the tunnel keeps
// serving afterwards.
func (s *scenarios) badTargets(t *testing.T) {
	cases := []struct{ name, path string }{
		{"closed port", "/api/v1/nodes/http:node-1:9/proxy/"},
		{"unreachable address", "/api/v1/nodes/http:node-unreachable:8080/proxy/"},
		// The kubelet of node-unresolvable is no-such-host.invalid:10250.
		{"unresolvable name", "/api/v1/namespaces/e2e/pods/unresolvable/log?container=main"},
	}
	for _, c := range cases {
		t.Logf("RESULT %s: %s: %s", s.m.name, c.name, s.expectFailure(t, c.path))
	}
	s.expectHello(t, nodeHTTP+"/hello")
}

// agentStopped is the negative control: with the agent stopped the same
// request fails (so the scenarios above did go through it), and works again
// once the agent is back.
func (s *scenarios) agentStopped(t *testing.T) {
	s.k.agent.stop(syscall.SIGTERM, 20*time.Second)
	if err := waitFor("server /readyz to report no agent", failBound, nil,
		httpStatus(http.DefaultClient, s.k.healthURL+"/readyz", 500)); err != nil {
		t.Fatal(err)
	}
	t.Logf("RESULT %s: agent stopped: %s", s.m.name, s.expectFailure(t, nodeHTTP+"/hello"))
	s.k.startAgent(t)
	t.Logf("RESULT %s: agent started again: first request through it after %v", s.m.name, s.recover(t))
}

// recover polls a request until it succeeds and returns how long it took.
func (s *scenarios) recover(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	err := waitFor("a request through the tunnel", 60*time.Second, nil, func() error {
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		defer cancel()
		code, body, err := s.a.get(ctx, nodeHTTP+"/hello")
		if err == nil && code == 200 && strings.Contains(string(body), "hello from fakenode") {
			return nil
		}
		return fmt.Errorf("%d %v", code, err)
	})
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(start).Round(time.Millisecond)
}

// faults: graceful restarts of either side, and SIGKILL of either side in
// the middle of a large transfer: the transfer fails promptly (never hangs)
// and the next request succeeds.
func (s *scenarios) faults(t *testing.T) {
	t.Run("RestartServer", func(t *testing.T) {
		start := time.Now()
		s.k.server.stop(syscall.SIGTERM, 30*time.Second)
		stopped := time.Since(start)
		s.k.startServer(t)
		s.recover(t)
		t.Logf("RESULT %s: konnq-server restarted (graceful stop took %v): first request through the tunnel %v after the stop began",
			s.m.name, stopped.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	})
	t.Run("RestartAgent", func(t *testing.T) {
		start := time.Now()
		s.k.agent.stop(syscall.SIGTERM, 30*time.Second)
		s.k.startAgent(t)
		s.recover(t)
		t.Logf("RESULT %s: konnq-agent restarted: first request through the tunnel %v after the stop began",
			s.m.name, time.Since(start).Round(time.Millisecond))
	})
	t.Run("KillServerMidTransfer", func(t *testing.T) {
		s.killMidTransfer(t, "konnq-server", func() { s.k.server.stop(syscall.SIGKILL, time.Second) }, func() { s.k.startServer(t) })
	})
	t.Run("KillAgentMidTransfer", func(t *testing.T) {
		s.killMidTransfer(t, "konnq-agent", func() { s.k.agent.stop(syscall.SIGKILL, time.Second) }, func() { s.k.startAgent(t) })
	})
}

// killMidTransfer starts a slow 50 MiB download, kills one side once bytes
// flow, and checks that the download ends in an error within failBound;
// then restarts that side and reports the recovery time.
func (s *scenarios) killMidTransfer(t *testing.T, who string, kill, restart func()) {
	ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
	defer cancel()
	path := fmt.Sprintf("%s/slow?n=%d&ms=20", nodeHTTP, transferBytes)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.a.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.a.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatalf("first MiB: %v", err)
	}
	killed := time.Now()
	kill()
	result := make(chan error, 1)
	var n int64
	go func() {
		var err error
		n, err = io.Copy(io.Discard, resp.Body)
		result <- err
	}()
	select {
	case err := <-result:
		if err == nil && n+1<<20 >= transferBytes {
			t.Fatalf("the download completed although %s was killed", who)
		}
		t.Logf("RESULT %s: SIGKILL %s mid-transfer: the apiserver's response ended %v later, after %d more bytes (%v)",
			s.m.name, who, time.Since(killed).Round(time.Millisecond), n, err)
	case <-time.After(failBound):
		cancel()
		t.Fatalf("the download was still pending %v after %s was killed", failBound, who)
	}
	start := time.Now()
	restart()
	s.recover(t)
	t.Logf("RESULT %s: %s started again: first request through the tunnel %v later", s.m.name, who, time.Since(start).Round(time.Millisecond))
}
