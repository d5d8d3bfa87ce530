package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
)

func TestParseArgs(t *testing.T) {
	files := []string{"--certificates", "ca.crt", "server.pem", "server.key"}
	ssl := []string{"--ssl-ca-certfile", "ca.crt", "--ssl-certfile", "server.pem", "--ssl-keyfile", "server.key"}
	cat := func(a ...[]string) []string {
		var out []string
		for _, x := range a {
			out = append(out, x...)
		}
		return out
	}
	tests := []struct {
		name      string
		args      []string
		mode      tlsMode
		usage     bool   // want a *cli.UsageError
		wantErr   string // substring; "" for success
		wantFiles bool
	}{
		{name: "seed command", args: files, mode: modeFiles, wantFiles: true},
		{name: "1.9+ spelling", args: ssl, mode: modeFiles, wantFiles: true},
		{name: "insecure", args: []string{"--insecure"}, mode: modeInsecure},
		{name: "acme", args: []string{"--acme-domain", "superlink.example.org"}, mode: modeACME},
		{name: "nothing", args: nil, wantErr: "certificates are required unless running with --insecure"},
		{name: "both spellings", args: cat(files, ssl), usage: true, wantErr: "--certificates and --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile conflict"},
		{name: "certificates and insecure", args: cat(files, []string{"--insecure"}), usage: true, wantErr: "--certificates and --insecure conflict"},
		{name: "acme and certificates", args: cat(files, []string{"--acme-domain", "x.example.org"}), usage: true, wantErr: "--certificates and --acme-domain conflict"},
		{name: "acme and insecure", args: []string{"--insecure", "--acme-domain", "x.example.org"}, usage: true, wantErr: "--insecure and --acme-domain conflict"},
		{name: "ssl incomplete", args: []string{"--ssl-certfile", "a", "--ssl-keyfile", "b"}, usage: true, wantErr: "--ssl-certfile and --ssl-keyfile needs --ssl-ca-certfile too"},
		{name: "ssl empty", args: []string{"--ssl-ca-certfile", "", "--ssl-certfile", "a", "--ssl-keyfile", "b"}, usage: true, wantErr: "--ssl-ca-certfile is empty"},
		{name: "two values", args: []string{"--certificates", "ca.crt", "server.pem"}, usage: true, wantErr: "needs three values"},
		{name: "database file", args: []string{"--insecure", "--database", "state.db"}, mode: modeInsecure},
		{name: "grpc-rere accepted", args: cat(files, []string{"--grpc-rere"}), mode: modeFiles, wantFiles: true},
		{name: "rest refused", args: cat(files, []string{"--rest"}), usage: true, wantErr: "--rest: the REST Fleet API is not built"},
		{name: "database in memory", args: []string{"--insecure", "--database", ":flwr-in-memory-state:"}, mode: modeInsecure},
		{name: "positional", args: []string{"--insecure", "server:app"}, usage: true, wantErr: `unexpected argument "server:app"`},
		{name: "unknown flag", args: []string{"--insecure", "--bogus"}, usage: true, wantErr: "--bogus"},
		{name: "bad address", args: []string{"--insecure", "--driver-api-address", "9091"}, usage: true, wantErr: "--driver-api-address \"9091\": the port is missing; give HOST:PORT"},
		{name: "poll interval zero", args: cat(files, []string{"--certificates-poll-interval", "0s"}), usage: true, wantErr: "--certificates-poll-interval 0s: must be at least 100ms"},
		{name: "poll interval busy loop", args: cat(files, []string{"--certificates-poll-interval", "1ns"}), usage: true, wantErr: "--certificates-poll-interval 1ns: must be at least 100ms"},
		{name: "poll interval without files", args: []string{"--insecure", "--certificates-poll-interval", "1s"}, usage: true, wantErr: "--certificates-poll-interval needs --certificates"},
		{name: "acme flag without domain", args: cat(files, []string{"--acme-email", "ops@example.org"}), usage: true, wantErr: "--acme-email needs --acme-domain"},
		{name: "supernode auth over TLS", args: cat(ssl, []string{"--enable-supernode-auth"}), mode: modeFiles, wantFiles: true},
		{name: "supernode auth without TLS", args: []string{"--insecure", "--enable-supernode-auth"}, usage: true, wantErr: "--enable-supernode-auth needs TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseArgs(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				var ue *cli.UsageError
				if errors.As(err, &ue) != tt.usage {
					t.Errorf("usage error = %v, want %v (exit 2 for usage, 1 otherwise)", !tt.usage, tt.usage)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is more than one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if c.mode != tt.mode {
				t.Errorf("mode = %v, want %v", c.mode, tt.mode)
			}
			if tt.wantFiles && (c.caFile != "ca.crt" || c.certFile != "server.pem" || c.keyFile != "server.key") {
				t.Errorf("files = %q %q %q", c.caFile, c.certFile, c.keyFile)
			}
			wantDriver := "0.0.0.0:9091"
			if tt.mode == modeACME {
				wantDriver = acmeDriverAddress // the public setup keeps the Driver API on loopback
			}
			if c.driverAddr != wantDriver || c.fleetAddr != "0.0.0.0:9092" || c.pollInterval != 5*time.Second {
				t.Errorf("defaults: %q %q %v", c.driverAddr, c.fleetAddr, c.pollInterval)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"--version"}, &out, &errOut); !errors.Is(err, cli.ErrVersion) {
		t.Fatalf("--version: %v, want cli.ErrVersion (exit 0)", err)
	}
	if got, want := out.String(), "flower-superlink "+cli.Version+"\n"; got != want || errOut.Len() != 0 {
		t.Fatalf("--version printed %q (stderr %q), want %q on stdout", got, errOut.String(), want)
	}
	out.Reset()
	if err := run(context.Background(), []string{"--help"}, &out, &errOut); !errors.Is(err, cli.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if !strings.HasPrefix(out.String(), name+": ") || errOut.Len() != 0 {
		t.Fatalf("--help: want the usage on stdout only\nstdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	}
}

func TestListenInUseNamesTheFlag(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = listen(l.Addr().String(), "--grpc-rere-fleet-api-address")
	if err == nil || !strings.Contains(err.Error(), "--grpc-rere-fleet-api-address "+l.Addr().String()+": the address is already in use") {
		t.Fatalf("err = %v", err)
	}
}
