package superlink

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/statetest"
	"github.com/sepal-fl/sepal/transport"
)

var _ transport.CertSource = testkit.StaticSource{}

// testCerts makes a CA and a server certificate for localhost, 127.0.0.1
// and ::1, and returns the credentials serving it and the CA file.
func testCerts(t testing.TB) (credentials.TransportCredentials, string) {
	t.Helper()
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	return transport.ServerCredentials(p.Source()), p.CAFile
}

type fixture struct {
	sl                    *SuperLink
	clock                 *statetest.Clock
	logs                  *testkit.SyncBuffer
	fleetConn, driverConn *grpc.ClientConn
	fleet                 flwrproto.FleetClient
	driver                flwrproto.DriverClient
	fleetAddr, driverAddr string
	caFile                string
}

// newStateFunc makes the state of a test's SuperLink with the fixture's
// clock and logger.
type newStateFunc func(t testing.TB, now func() time.Time, log *slog.Logger) state.State

// start runs a SuperLink with a fake clock on two loopback listeners over
// real TLS, with clients for both APIs, on the in-memory state. Serve's
// return is checked when the test ends, after the clients are closed.
func start(t testing.TB) *fixture { return startWith(t, nil) }

// startWith is start on the state newState makes (nil: the SuperLink's
// default, in memory).
func startWith(t testing.TB, newState newStateFunc) *fixture {
	t.Helper()
	creds, caFile := testCerts(t)
	clock := &statetest.Clock{}
	clock.Set(time.Unix(1795638840, 0))
	logs := &testkit.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	var st state.State = memstate.New(memstate.Options{Logger: log, Now: clock.Now})
	if newState != nil {
		st = newState(t, clock.Now, log)
	}
	sl := New(Options{
		Logger:        log,
		Now:           clock.Now,
		SweepInterval: time.Hour,
		State:         st,
	})
	link := testkit.Serve(t, serveOn(sl, creds))
	f := &fixture{sl: sl, clock: clock, logs: logs, fleetAddr: link.Fleet, driverAddr: link.Driver, caFile: caFile}
	f.fleetConn = dial(t, f.fleetAddr, caFile)
	f.driverConn = dial(t, f.driverAddr, caFile)
	f.fleet = flwrproto.NewFleetClient(f.fleetConn)
	f.driver = flwrproto.NewDriverClient(f.driverConn)
	t.Cleanup(func() { // runs before Serve's cleanup, registered earlier
		f.fleetConn.Close()
		f.driverConn.Close()
	})
	return f
}

func dial(t testing.TB, addr, caFile string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	creds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: caFile})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// fromAddr makes a gRPC client's connections come from the loopback
// address local, another peer than 127.0.0.1.
func fromAddr(local string) grpc.DialOption {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	})
}

// healthy asserts that both APIs still answer their health check.
func (f *fixture) healthy(t testing.TB) {
	t.Helper()
	for _, c := range []*grpc.ClientConn{f.fleetConn, f.driverConn} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health check on %s: %v %v", c.Target(), r, err)
		}
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// now returns the fixture clock as unix seconds.
func (f *fixture) now() float64 { return float64(f.clock.Now().UnixMicro()) / 1e6 }

// taskIns builds a valid TaskIns for node in run.
var taskIns = statetest.TaskIns

// taskRes builds a valid answer of node to ins.
var taskRes = statetest.TaskRes

// wantCode fails t unless err has code want and a message holding msg.
var wantCode = statetest.WantCode

// stats returns the state's counts.
func (f *fixture) stats(t testing.TB) state.Stats {
	t.Helper()
	st, err := f.sl.state.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// serveOn is sl serving the Fleet and Driver APIs with creds (nil:
// plaintext), for testkit.Serve.
func serveOn(sl *SuperLink, creds credentials.TransportCredentials) testkit.ServeFunc {
	return func(ctx context.Context, fleet, driver net.Listener) error {
		return sl.Serve(ctx, Listeners{Fleet: fleet, Driver: driver, FleetCreds: creds, DriverCreds: creds})
	}
}

// Methods and the client preface, as the raw HTTP/2 tests send them.
const (
	mCreateNode   = "/flwr.proto.Fleet/CreateNode"
	mPushTaskRes  = "/flwr.proto.Fleet/PushTaskRes"
	mPing         = "/flwr.proto.Fleet/Ping"
	clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)
