package metrics_test

import (
	"context"
	"log/slog"
	"net"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/metrics"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

// TestNodeLimitMetrics: the node limits' refusals are counted by reason,
// every reason exported from the start, as flower-superlink connects
// them.
func TestNodeLimitMetrics(t *testing.T) {
	m := metrics.New(metrics.Options{Logger: slog.New(slog.DiscardHandler)})
	sl := superlink.New(superlink.Options{State: memstate.New(memstate.Options{}), Logger: slog.New(slog.DiscardHandler), NodeLimits: superlink.NodeLimits{MaxPerConnection: 1}})
	m.SetNodeLimits(sl.NodeLimitStats)
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	pki := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	creds := transport.ServerCredentials(pki.Source())
	link := testkit.Serve(t, func(ctx context.Context, fleet, driver net.Listener) error {
		return sl.Serve(ctx, superlink.Listeners{Fleet: fleet, Driver: driver, FleetCreds: creds, DriverCreds: creds})
	})

	s := testkit.Scrape(t, srv.URL+"/metrics")
	for _, r := range superlink.NodeRefusalReasons {
		s.Want(t, 0, "sepal_node_registrations_refused_total", "reason", r)
	}
	for _, r := range superlink.NodeCallRefusalReasons {
		s.Want(t, 0, "sepal_node_calls_refused_total", "reason", r)
	}
	s.Want(t, 0, "sepal_nodes_revoked_total")

	creds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: pki.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(link.Fleet, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fleet := flwrproto.NewFleetClient(conn)
	ctx := context.Background()
	for _, pi := range []float64{1e9, 30, 30, 30} {
		fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: pi})
	}
	s = testkit.Scrape(t, srv.URL+"/metrics")
	s.Want(t, 1, "sepal_node_registrations_refused_total", "reason", superlink.RefusedPingInterval)
	s.Want(t, 2, "sepal_node_registrations_refused_total", "reason", superlink.RefusedPerConnection)
	s.Want(t, 0, "sepal_node_registrations_refused_total", "reason", superlink.RefusedRate)
}
