package e2e

import (
	"testing"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// checkStateMetrics checks the state metrics after TestMonitoringFiles's
// run: two client apps online, one run, every task answered and pulled.
func checkStateMetrics(t *testing.T, s testkit.Samples) {
	t.Helper()
	s.Want(t, 1, "sepal_state_up")
	s.Want(t, 2, "sepal_nodes", "state", "online")
	s.Want(t, 0, "sepal_nodes", "state", "offline")
	s.Want(t, 1, "sepal_runs")
	s.Want(t, 0, "sepal_task_res_waiting")
	s.Want(t, 0, "sepal_task_ins", "state", "delivered")
	if _, ok := s.Value("sepal_parameter_bytes"); !ok {
		t.Errorf("sepal_parameter_bytes is missing")
	}
}

// checkStatePage checks the nodes and runs the status page shows after
// TestMonitoringFiles's run.
func checkStatePage(t *testing.T, p statusPage) {
	t.Helper()
	if p.nodesOnline != "2" {
		t.Errorf("the page shows %q nodes online, want 2:\n%s", p.nodesOnline, p.text)
	}
	if len(p.rounds) != 1 || p.rounds[0] != "2" {
		t.Errorf("the page shows runs at rounds %q, want one run at round 2:\n%s", p.rounds, p.text)
	}
	if len(p.identities) != 0 {
		t.Errorf("the page shows certificate identities %q without mutual TLS", p.identities)
	}
}
