package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

func TestParseArgsMTLS(t *testing.T) {
	files := []string{"--certificates", "ca.crt", "server.pem", "server.key"}
	acme := []string{"--acme-domain", "superlink.example.org"}
	for _, tt := range []struct {
		name       string
		args       []string
		wantErr    string // a usage error holding this; "" for success
		wantDriver string
	}{
		{"both APIs, one CA", append(files, "--fleet-api-client-ca", "ca.crt", "--driver-api-client-ca", "ca.crt", "--client-crl", "crl.pem"), "", "0.0.0.0:9091"},
		{"crl alone", append(files, "--client-crl", "crl.pem"), "--client-crl needs --fleet-api-client-ca or --driver-api-client-ca", ""},
		{"insecure", []string{"--insecure", "--fleet-api-client-ca", "ca.crt"}, "--insecure and --fleet-api-client-ca conflict", ""},
		{"insecure driver", []string{"--insecure", "--driver-api-client-ca", "ca.crt"}, "--insecure and --driver-api-client-ca conflict", ""},
		{"empty", append(files, "--fleet-api-client-ca", ""), "--fleet-api-client-ca is empty", ""},
		{"acme: Driver API on loopback", acme, "", acmeDriverAddress},
		{"acme: an explicit address wins", append(acme, "--driver-api-address", "0.0.0.0:9091"), "", "0.0.0.0:9091"},
		{"acme with client CAs polls them", append(acme, "--fleet-api-client-ca", "ca.crt", "--certificates-poll-interval", "1s"), "", acmeDriverAddress},
		{"files: 0.0.0.0 stays", files, "", "0.0.0.0:9091"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseArgs(tt.args, io.Discard)
			if tt.wantErr != "" {
				var ue *cli.UsageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.driverAddr != tt.wantDriver {
				t.Errorf("Driver API address %q, want %q", c.driverAddr, tt.wantDriver)
			}
		})
	}
}

func TestWarnOpenDriver(t *testing.T) {
	for _, tt := range []struct {
		addr     string
		clientCA bool
		warn     bool
	}{
		{"0.0.0.0:9091", false, true},
		{"[::]:9091", false, true},
		{"10.1.2.3:9091", false, true},
		{"127.0.0.1:9091", false, false},
		{"[::1]:9091", false, false},
		{"0.0.0.0:9091", true, false},
	} {
		var buf testkit.SyncBuffer
		m := &mtlsFlags{}
		if tt.clientCA {
			m.driverSrc = clientCASource(t)
		}
		ap, err := net.ResolveTCPAddr("tcp", tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		m.warnOpenDriver(slog.New(slog.NewTextHandler(&buf, nil)), ap)
		got := buf.String()
		if warned := strings.Contains(got, "level=WARN"); warned != tt.warn {
			t.Errorf("%s (client CA %v): warned %v, want %v:\n%s", tt.addr, tt.clientCA, warned, tt.warn, got)
		}
		if tt.warn {
			for _, w := range []string{"anyone who can reach that port", "start runs", "127.0.0.1:9091", "--driver-api-client-ca"} {
				if !strings.Contains(got, w) {
					t.Errorf("the warning lacks %q:\n%s", w, got)
				}
			}
			if strings.Count(got, "\n") != 1 {
				t.Errorf("want one line:\n%s", got)
			}
		}
	}
}

// TestRefusalLogCoalesces: one line per distinct refusal a minute.
func TestRefusalLogCoalesces(t *testing.T) {
	var buf testkit.SyncBuffer
	r := &refusalLog{log: slog.New(slog.NewTextHandler(&buf, nil)), seen: map[string]time.Time{}}
	h := r.hook("fleet")
	e := &transport.ClientCertError{Cause: transport.CauseRevoked, Role: transport.RoleNode, Remote: "10.0.0.1:4000", Serial: "0A"}
	for range 5 {
		h(e)
	}
	h(&transport.ClientCertError{Cause: transport.CauseRevoked, Role: transport.RoleNode, Remote: "10.0.0.1:4001", Serial: "0A"}) // another port, same host
	h(&transport.ClientCertError{Cause: transport.CauseUnknownCA, Role: transport.RoleNode, Remote: "10.0.0.1:4002", Serial: "0B"})
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Errorf("%d lines, want 2:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "cause=revoked") || !strings.Contains(buf.String(), "cause=unknown_ca") {
		t.Errorf("the log lacks the causes:\n%s", buf.String())
	}
}

// clientCASource is a ClientCAFile of a new CA.
func clientCASource(t *testing.T) *certfile.ClientCAFile {
	t.Helper()
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	s, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: p.CAFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRefusalMessage: every refusal the SuperLink logs says what to do,
// with the flower-certs command that issues the certificate, in the
// certificate's own role and name when it holds them.
func TestRefusalMessage(t *testing.T) {
	alice := transport.Identity{Role: transport.RoleNode, Name: "alice"}
	for _, c := range []struct {
		e     transport.ClientCertError
		words []string
	}{
		{transport.ClientCertError{Cause: transport.CauseNoCertificate, Role: transport.RoleNode, Remote: "10.0.0.1:4000"},
			[]string{"a client from 10.0.0.1:4000 presented none", "give the client one (flower-certs node NAME) with --client-certificate and --client-key"}},
		{transport.ClientCertError{Cause: transport.CauseExpired, Role: transport.RoleNode, Identity: alice, Serial: "01", Err: errors.New("x509: expired")},
			[]string{"flower-certs node --force alice"}},
		{transport.ClientCertError{Cause: transport.CauseExpired, Role: transport.RoleServerApp, Subject: "CN=x", Serial: "01", Err: errors.New("x509: expired")},
			[]string{"flower-certs serverapp --force NAME"}},
		{transport.ClientCertError{Cause: transport.CauseRevoked, Role: transport.RoleNode, Identity: alice, Serial: "01"},
			[]string{"is revoked", "flower-certs node --force alice"}},
		{transport.ClientCertError{Cause: transport.CauseUnknownCA, Role: transport.RoleNode, Subject: "CN=eve", Issuer: "CN=other", Serial: "02"},
			[]string{`(issuer "CN=other")`, "issue it from the SuperLink's CA (flower-certs node NAME)"}},
		{transport.ClientCertError{Cause: transport.CauseBadCertificate, Role: transport.RoleServerApp, Subject: "CN=srv", Serial: "01", Err: errors.New("x509: wrong usage")},
			[]string{"refused", "flower-certs serverapp NAME"}},
	} {
		msg := refusalMessage(&c.e)
		if !strings.HasPrefix(msg, c.e.Problem()+": ") {
			t.Errorf("%q does not start with transport's words %q", msg, c.e.Problem())
		}
		for _, w := range c.words {
			if !strings.Contains(msg, w) {
				t.Errorf("%s refusal %q lacks %q", c.e.Cause, msg, w)
			}
		}
	}
}

// With --acme-domain the Control API defaults to loopback, as the Driver
// API; an address given is kept.
func TestACMEControlOnLoopback(t *testing.T) {
	acme := []string{"--acme-domain", "superlink.example.org", "--acme-email", "ops@example.org"}
	c, err := parseArgs(acme, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.f129.controlAddr != acmeControl {
		t.Errorf("--acme-domain: Control API on %s, want %s", c.f129.controlAddr, acmeControl)
	}
	c, err = parseArgs(append(acme, "--control-api-address", "0.0.0.0:9093"), io.Discard)
	if err != nil || c.f129.controlAddr != "0.0.0.0:9093" {
		t.Errorf("an address given: %v %v", c, err)
	}
	c, err = parseArgs([]string{"--insecure"}, io.Discard)
	if err != nil || c.f129.controlAddr != defaultControl {
		t.Errorf("--insecure: %v %v, want Flower's %s", c, err, defaultControl)
	}
}
