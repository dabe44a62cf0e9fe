// Package pprof checks konnq's /debug/pprof/profile (--enable-profiling) with
// the parser `go tool pprof` itself uses, github.com/google/pprof/profile:
// a CPU profile of konnq-server and one of konnq-agent, taken while data
// flows through both, parse, validate, have samples and, between them, name
// konnq's own functions (a 1 s profile of either has only a dozen or two
// samples, which may all fall in quinn, ring or tokio frames).
package pprof

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	interop "konnq.dev/interop/common"
)

type fetched struct {
	name string
	p    *profile.Profile
	err  error
}

// fetchProfile GETs url and parses the body as `go tool pprof` does.
func fetchProfile(name, url string) fetched {
	c := &http.Client{Timeout: 60 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return fetched{name: name, err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fetched{name: name, err: fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
		return fetched{name: name, err: fmt.Errorf("GET %s: Content-Type %q", url, ct)}
	}
	p, err := profile.Parse(resp.Body)
	return fetched{name: name, p: p, err: err}
}

func TestCPUProfilesParseWithGoPprof(t *testing.T) {
	h := interop.Start(t, interop.Options{EnableProfiling: true})
	const path = "/debug/pprof/profile?seconds=1"
	results := make(chan fetched, 2)
	go func() { results <- fetchProfile("konnq-server", h.ServerAdmin+path) }()
	go func() { results <- fetchProfile("konnq-agent", h.AgentAdmin+path) }()

	// Data through both processes while they are sampled.
	target := interop.EchoTarget(t)
	payload := interop.RandomBytes(4<<20, 1)
	var got []fetched
	for echoes := 0; len(got) < 2; echoes++ {
		select {
		case r := <-results:
			got = append(got, r)
			continue
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := interop.Dial(ctx, h.Socket, target.Addr)
		cancel()
		if err != nil {
			t.Fatalf("dial %s through konnq: %v", target.Addr, err)
		}
		interop.Echo(t, conn, payload, 32<<10, 30*time.Second)
		interop.CheckCloseErr(t, conn.Close())
	}

	konnqFunctions := 0
	for _, r := range got {
		if r.err != nil {
			t.Fatalf("%s: %v", r.name, r.err)
		}
		p := r.p
		if err := p.CheckValid(); err != nil {
			t.Errorf("%s: profile.CheckValid: %v", r.name, err)
		}
		var types []string
		for _, st := range p.SampleType {
			types = append(types, st.Type+"/"+st.Unit)
		}
		if strings.Join(types, ",") != "samples/count,cpu/nanoseconds" {
			t.Errorf("%s: sample types %v, want those of Go's CPU profile", r.name, types)
		}
		if p.PeriodType == nil || p.PeriodType.Type != "cpu" || p.PeriodType.Unit != "nanoseconds" || p.Period != 10_000_000 {
			t.Errorf("%s: period %v %d, want cpu/nanoseconds every 10 ms", r.name, p.PeriodType, p.Period)
		}
		if p.DurationNanos < int64(time.Second) {
			t.Errorf("%s: duration %v, want at least the 1 s asked for", r.name, time.Duration(p.DurationNanos))
		}
		konnq := 0
		for _, f := range p.Function {
			if strings.Contains(f.Name, "konnq") {
				konnq++
			}
		}
		if len(p.Sample) == 0 {
			t.Errorf("%s: no samples while data flowed through it for the whole profile", r.name)
		}
		konnqFunctions += konnq
		t.Logf("%s: %d samples over %v, %d functions (%d konnq's)", r.name, len(p.Sample),
			time.Duration(p.DurationNanos).Round(time.Millisecond), len(p.Function), konnq)
	}
	if konnqFunctions == 0 {
		t.Errorf("no function named konnq... in either profile: symbols not resolved?")
	}
}
