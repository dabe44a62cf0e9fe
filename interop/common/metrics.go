package interop

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

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
		`konnectivity_network_proxy_server_grpc_connections{service_method="Proxy"}`,
		"konnectivity_network_proxy_server_http_connections",
	}
	AgentGauges = []string{
		"konnq_agent_pending_dials",
		"konnectivity_network_proxy_agent_open_endpoint_connections",
	}
)

// Snapshot reads every gauge of both processes (of the server alone without
// an agent).
func (h *Harness) Snapshot(ctx context.Context) (map[string]float64, error) {
	out := map[string]float64{}
	for base, names := range map[string][]string{h.ServerAdmin: ServerGauges, h.AgentAdmin: AgentGauges} {
		if base == "" {
			continue
		}
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
	names := ServerGauges
	if h.AgentAdmin != "" {
		names = append(append([]string{}, ServerGauges...), AgentGauges...)
	}
	for _, n := range names {
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
