package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The node's network: a namespace joined to the host by a veth pair. The
// host side (hostIP) is where konnq-server's agent port is reached; the
// node side (nodeIP) is the node's InternalIP and pod IP; serviceIP, on the
// node's loopback, is the ClusterIP of the test's Services. nftables in the
// namespace refuses every connection that the host side opens, so the
// control plane reaches the node only through konnq-agent.
const (
	hostIP      = "10.199.0.1"
	nodeIP      = "10.199.0.2"
	serviceIP   = "10.200.0.10"
	serviceCIDR = "10.200.0.0/24"
	// unreachableIP is on no network of the node: the agent's dial fails
	// with "network is unreachable".
	unreachableIP = "10.201.0.1"
)

type nodeNet struct {
	ns       string
	hostVeth string
	nodeVeth string
}

// newNodeNet creates the namespace, the veth pair, the addresses and the
// firewall, and removes them when the test ends.
func newNodeNet(t testing.TB) *nodeNet {
	t.Helper()
	removeStaleNamespaces()
	id := os.Getpid() % 100000
	n := &nodeNet{
		ns:       fmt.Sprintf("kqe-%d", os.Getpid()),
		hostVeth: fmt.Sprintf("kqeh%d", id),
		nodeVeth: fmt.Sprintf("kqen%d", id),
	}
	run(t, "ip", "netns", "add", n.ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.ns).Run() })
	run(t, "ip", "link", "add", n.hostVeth, "type", "veth", "peer", "name", n.nodeVeth)
	run(t, "ip", "link", "set", n.nodeVeth, "netns", n.ns)
	run(t, "ip", "addr", "add", hostIP+"/24", "dev", n.hostVeth)
	run(t, "ip", "link", "set", n.hostVeth, "up")
	in := func(argv ...string) { run(t, append([]string{"ip", "netns", "exec", n.ns}, argv...)...) }
	in("ip", "link", "set", "lo", "up")
	in("ip", "addr", "add", nodeIP+"/24", "dev", n.nodeVeth)
	in("ip", "addr", "add", serviceIP+"/32", "dev", "lo")
	in("ip", "link", "set", n.nodeVeth, "up")
	rules := fmt.Sprintf(`table inet konnq_e2e {
	chain input {
		type filter hook input priority 0; policy accept;
		iifname "%[1]s" ct state established,related accept
		iifname "%[1]s" meta l4proto tcp reject with tcp reset
		iifname "%[1]s" drop
	}
}
`, n.nodeVeth)
	cmd := exec.Command("ip", "netns", "exec", n.ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", n.ns, err, out)
	}
	return n
}

// removeStaleNamespaces deletes kqe-PID namespaces whose process is gone
// (a run that was killed before its cleanup): their veth would hold hostIP.
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		pidText, ok := strings.CutPrefix(name, "kqe-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidText)
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
}
