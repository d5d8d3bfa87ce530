package superlink_test

import (
	"context"
	"log"
	"net"
	"os/signal"
	"syscall"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

// A SuperLink serving the Fleet API on :9092 and the Driver API on :9091
// with certificates from files (reloaded while it serves), until SIGINT or
// SIGTERM.
func ExampleSuperLink_Serve() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	src, err := certfile.NewFileSource(certfile.FileSourceOptions{
		CAFile: "certificates/ca.crt", CertFile: "certificates/server.pem", KeyFile: "certificates/server.key",
	})
	if err != nil {
		log.Fatal(err)
	}
	go src.Run(ctx)
	fleet, err := net.Listen("tcp", "0.0.0.0:9092")
	if err != nil {
		log.Fatal(err)
	}
	driver, err := net.Listen("tcp", "0.0.0.0:9091")
	if err != nil {
		log.Fatal(err)
	}
	creds := transport.ServerCredentials(src)
	sl := superlink.New(superlink.Options{State: memstate.New(memstate.Options{})})
	if err := sl.Serve(ctx, superlink.Listeners{Fleet: fleet, Driver: driver, FleetCreds: creds, DriverCreds: creds}); err != nil {
		log.Fatal(err)
	}
}
