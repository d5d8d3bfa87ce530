package main

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
)

func TestSplitCertificates(t *testing.T) {
	seed := []string{"certificates/ca.crt", "certificates/server.pem", "certificates/server.key"}
	tests := []struct {
		name    string
		args    []string
		files   []string // nil: flag absent
		rest    []string
		wantErr string // substring of the usage error; "" for none
	}{
		{name: "absent", args: []string{"--insecure"}, rest: []string{"--insecure"}},
		{name: "empty", args: nil, rest: []string{}},
		{
			name:  "seed command",
			args:  []string{"--certificates", "certificates/ca.crt", "certificates/server.pem", "certificates/server.key"},
			files: seed, rest: []string{},
		},
		{
			name:  "seed with addresses around it",
			args:  []string{"--driver-api-address", "127.0.0.1:1", "--certificates", "a", "b", "c", "--grpc-rere-fleet-api-address=127.0.0.1:2"},
			files: []string{"a", "b", "c"},
			rest:  []string{"--driver-api-address", "127.0.0.1:1", "--grpc-rere-fleet-api-address=127.0.0.1:2"},
		},
		{
			name:  "inline first value",
			args:  []string{"--certificates=a", "b", "c", "--insecure"},
			files: []string{"a", "b", "c"}, rest: []string{"--insecure"},
		},
		{
			name:  "a fourth value is left to pflag (and refused there as an argument)",
			args:  []string{"--certificates", "a", "b", "c", "d"},
			files: []string{"a", "b", "c"}, rest: []string{"d"},
		},
		{
			name: "value of another flag is not taken for the flag",
			args: []string{"--database", "--certificates"},
			rest: []string{"--database", "--certificates"},
		},
		{
			name: "after -- nothing is touched",
			args: []string{"--", "--certificates", "a", "b", "c"},
			rest: []string{"--", "--certificates", "a", "b", "c"},
		},
		{name: "two values", args: []string{"--certificates", "a", "b"}, wantErr: "needs three values but got 2: --certificates CA_CERT SERVER_CERT PRIVATE_KEY"},
		{name: "no value", args: []string{"--certificates"}, wantErr: "got 0"},
		{name: "two values then a flag", args: []string{"--certificates", "a", "b", "--insecure"}, wantErr: "got 2 before --insecure"},
		{name: "inline two values", args: []string{"--certificates=a", "b"}, wantErr: "got 2"},
		{name: "flag in place of a value", args: []string{"--certificates", "a", "--ssl-certfile", "b", "c"}, wantErr: "before --ssl-certfile"},
		{name: "short flag in place of a value", args: []string{"--certificates", "-h", "b", "c"}, wantErr: "got 0 before -h"},
		{name: "empty inline value", args: []string{"--certificates=", "b", "c"}, wantErr: "empty value"},
		{name: "empty value", args: []string{"--certificates", "a", "", "c"}, wantErr: "empty value"},
		{name: "twice", args: []string{"--certificates", "a", "b", "c", "--certificates", "a", "b", "c"}, wantErr: "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := cli.NewFlagSet(command, io.Discard)
			fs.String("database", "", "")
			fs.Bool("insecure", false, "")
			fs.String("ssl-certfile", "", "")
			fs.String("driver-api-address", "", "")
			fs.String("grpc-rere-fleet-api-address", "", "")
			files, rest, err := splitCertificates(fs, tt.args)
			if tt.wantErr != "" {
				var ue *cli.UsageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "--certificates CA_CERT SERVER_CERT PRIVATE_KEY") {
					t.Errorf("error %q does not show the right form", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !slices.Equal(files, tt.files) || (files == nil) != (tt.files == nil) {
				t.Errorf("files = %q, want %q", files, tt.files)
			}
			if !slices.Equal(rest, tt.rest) {
				t.Errorf("rest = %q, want %q", rest, tt.rest)
			}
		})
	}
}

func TestCertificatesFlagInUsage(t *testing.T) {
	var out strings.Builder
	_, err := parseArgs([]string{"--help"}, &out)
	if !errors.Is(err, cli.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	u := out.String()
	for _, want := range []string{
		"--certificates CA_CERT SERVER_CERT PRIVATE_KEY",
		"flower-superlink --certificates certificates/ca.crt certificates/server.pem certificates/server.key",
		"--insecure",
		"--acme-domain superlink.example.org --acme-email ops@example.org",
		"--ssl-ca-certfile",
		"--grpc-rere-fleet-api-address string",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("usage lacks %q:\n%s", want, u)
		}
	}
	if !strings.HasPrefix(u, name+": ") || strings.Index(u, "Examples:") > strings.Index(u, "Flags:") {
		t.Errorf("usage does not open with the examples:\n%s", u)
	}
}
