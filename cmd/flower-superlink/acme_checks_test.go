package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/acme"
	"github.com/sepal-fl/sepal/internal/cli"
)

// Bad ACME values are usage errors that name the flag and the right reason.
func TestACMEValuesRefused(t *testing.T) {
	d := []string{"--acme-domain", "superlink.example.org"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--acme-domain", "foo bar.example.org"}, `--acme-domain: domain "foo bar.example.org": it contains a space`},
		{[]string{"--acme-domain", "https://superlink.example.org/"}, "it is a URL"},
		{[]string{"--acme-domain", "superlink.example.org:9092"}, "it has a port"},
		{append(d, "--acme-email", "notanaddress"), `--acme-email: e-mail address "notanaddress": it has no @`},
		{append(d, "--acme-email", "Ops <ops@example.org>"), "--acme-email: e-mail address"},
	} {
		_, err := parseArgs(tc.args, io.Discard)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want a usage error with %q", tc.args, err, tc.want)
		}
	}
	if _, err := parseArgs(append(d, "--acme-email", "ops@example.org"), io.Discard); err != nil {
		t.Errorf("a good address: %v", err)
	}
}

// A failed ACME start-up names the flag at fault: --acme-ca-root when the
// CA's HTTPS certificate is not trusted (with or without the flag), else
// --acme-ca when the CA cannot be reached; other failures are left alone.
func TestObtainErrorNamesFlag(t *testing.T) {
	untrusted := fmt.Errorf("no certificate: %w", errors.Join(acme.ErrCAUnreachable, acme.ErrCAUntrusted))
	for _, tc := range []struct {
		err    error
		caRoot string
		want   []string
	}{
		{untrusted, "", []string{"--acme-ca-root: ", "--acme-ca-root FILE", "system roots"}},
		{untrusted, "roots.pem", []string{"--acme-ca-root roots.pem: ", "that file lacks the roots"}},
		{fmt.Errorf("no certificate: %w", acme.ErrCAUnreachable), "", []string{"--acme-ca: "}},
		{errors.New("no certificate for a.test"), "", []string{"no certificate for a.test"}},
	} {
		got := obtainError(tc.err, tc.caRoot).Error()
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("obtainError(%v, %q) = %q, lacks %q", tc.err, tc.caRoot, got, w)
			}
		}
	}
}
