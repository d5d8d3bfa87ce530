package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/transport"
)

// A source on a PostgreSQL storage keeps every ability of the ACME source.
var (
	_ transport.CertSource = (*sharedSource)(nil)
	_ transport.Runner     = (*sharedSource)(nil)
	_ transport.ALPNSource = (*sharedSource)(nil)
	_ obtainer             = (*sharedSource)(nil)
)

// Which storage the flags choose: a folder, the --acme-storage database,
// or the --database one when --acme-storage is not given.
func TestACMEStorageChoice(t *testing.T) {
	const url = "postgres://sepal@db.example.org/sepal"
	for _, c := range []struct {
		name      string
		args      []string
		dsn, flag string
		usage     string
	}{
		{"folder", []string{"--acme-storage", "/var/lib/sepal/acme"}, "", "", ""},
		{"default folder", nil, "", "", ""},
		{"url", []string{"--acme-storage", url}, url, "--acme-storage", ""},
		{"key/value", []string{"--acme-storage", "host=db.example.org dbname=sepal"}, "host=db.example.org dbname=sepal", "--acme-storage", ""},
		{"database by default", []string{"--database", url}, url, "--database", ""},
		{"folder over database", []string{"--database", url, "--acme-storage", "acme"}, "", "", ""},
		{"sqlite database", []string{"--database", "state.db"}, "", "", ""},
		{"autocert", []string{"--acme-storage", url, "--acme-client", "autocert"}, url, "--acme-storage", "--acme-client autocert cannot keep its certificates in PostgreSQL (--acme-storage)"},
		{"autocert from database", []string{"--database", url, "--acme-client", "autocert"}, url, "--database", "(--database): use --acme-client certmagic"},
		{"negative check", []string{"--acme-storage-check-interval", "-1s"}, "", "", "--acme-storage-check-interval"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			fs.String("database", inMemoryDatabase, "")
			a := registerACMEFlags(fs)
			if err := fs.Parse(append([]string{"--acme-domain", "superlink.example.org"}, c.args...)); err != nil {
				t.Fatal(err)
			}
			dsn, flag := a.postgresStorage()
			if dsn != c.dsn || flag != c.flag {
				t.Errorf("postgresStorage() = %q, %q; want %q, %q", dsn, flag, c.dsn, c.flag)
			}
			err := a.check()
			var ue *cli.UsageError
			switch {
			case c.usage == "" && err != nil:
				t.Errorf("check: %v", err)
			case c.usage != "" && (!errors.As(err, &ue) || !strings.Contains(err.Error(), c.usage)):
				t.Errorf("check: %v, want a usage error with %q", err, c.usage)
			}
		})
	}
}

// A PostgreSQL storage that cannot be reached stops start-up with one
// message naming the flag, before anything listens, without the password.
func TestACMEStorageUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	fleet, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fleetAddr := fleet.Addr().String()
	fleet.Close()
	var stderr strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, []string{"--acme-domain", "superlink.example.org",
		"--acme-storage", fmt.Sprintf("postgres://sepal:s3cret@127.0.0.1:%d/sepal", port),
		"--driver-api-address", "127.0.0.1:0", "--grpc-rere-fleet-api-address", fleetAddr}, &strings.Builder{}, &stderr)
	if err == nil {
		t.Fatal("run succeeded with an unreachable --acme-storage")
	}
	msg := err.Error()
	for _, want := range []string{"--acme-storage postgres://sepal:xxxxx@127.0.0.1:", "cannot reach the server", "connection refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q: %s", want, msg)
		}
	}
	if strings.Contains(msg+stderr.String(), "s3cret") {
		t.Errorf("the password was printed:\n%s\n%s", msg, stderr.String())
	}
	if strings.Contains(stderr.String(), "listening") || strings.Contains(stderr.String(), "msg=serving") {
		t.Errorf("something listened before the storage check failed:\n%s", stderr.String())
	}
	// The Fleet API address is still free: nothing was bound.
	if l, err := net.Listen("tcp", fleetAddr); err != nil {
		t.Errorf("the Fleet API address %s was left bound: %v", fleetAddr, err)
	} else {
		l.Close()
	}
}
