package metrics_test

import (
	"context"
	"fmt"

	"github.com/sepal-fl/sepal/metrics"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink"
)

// A SuperLink with metrics: the gRPC interceptors go to the SuperLink, its
// state to the metrics, and its transport credentials through Credentials
// (so every handshake is counted); Handler serves /metrics, the status
// page, /healthz and /readyz on an address of their own.
func Example() {
	m := metrics.New(metrics.Options{Version: "v1.0.0"})
	sl := superlink.New(superlink.Options{State: memstate.New(memstate.Options{}), ServerOptions: m.GRPCServerOptions()})
	m.SetState(sl.State())
	// creds := m.Credentials(transport.ServerCredentials(src))
	// go sl.Serve(ctx, superlink.Listeners{Fleet: fleetLis, Driver: driverLis, FleetCreds: creds, DriverCreds: creds})
	// m.SetListeners(fleetLis.Addr(), driverLis.Addr())
	// go http.Serve(metricsLis, m.Handler())

	ready, why := m.Ready(context.Background())
	fmt.Println(ready, why)
	m.SetServing(true) // once the certificate is in and the listeners are open
	ready, why = m.Ready(context.Background())
	fmt.Println(ready, why)
	// Output:
	// false not serving yet (the certificate is still being obtained, or the listeners are not open)
	// true ready
}
