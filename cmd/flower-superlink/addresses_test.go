package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
)

// An impossible address is a usage error naming its flag, before anything
// listens; two listeners on one port too.
func TestImpossibleAddresses(t *testing.T) {
	acme := []string{"--acme-domain", "superlink.example.org", "--acme-challenge", "http-01"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--insecure", "--driver-api-address", "127.0.0.1:99999"}, `--driver-api-address "127.0.0.1:99999": port 99999 is out of range`},
		{[]string{"--insecure", "--grpc-rere-fleet-api-address", ":abc"}, `--grpc-rere-fleet-api-address ":abc": port "abc" is not a number`},
		{[]string{"--insecure", "--driver-api-address", "host:-1"}, `--driver-api-address "host:-1": port -1 is out of range`},
		{[]string{"--insecure", "--driver-api-address", "localhost:"}, `--driver-api-address "localhost:": the port is empty`},
		{[]string{"--insecure", "--driver-api-address", "127.0.0.1:9092"}, "--driver-api-address 127.0.0.1:9092 and --grpc-rere-fleet-api-address 0.0.0.0:9092 take the same port"},
		{[]string{"--insecure", "--driver-api-address", "127.0.0.1:7000", "--grpc-rere-fleet-api-address", "127.0.0.1:7000"}, "take the same port"},
		{append(acme, "--acme-http-address", ":9092"), "--grpc-rere-fleet-api-address 0.0.0.0:9092 and --acme-http-address :9092 take the same port"},
		{append(acme, "--acme-http-address", ":99999"), `--acme-http-address ":99999": port 99999 is out of range`},
		{[]string{"--insecure", "--metrics-address", "127.0.0.1:9092"}, "--grpc-rere-fleet-api-address 0.0.0.0:9092 and --metrics-address 127.0.0.1:9092 take the same port"},
		{[]string{"--insecure", "--metrics-address", "127.0.0.1:99999"}, `--metrics-address "127.0.0.1:99999": port 99999 is out of range`},
	} {
		_, err := parseArgs(tc.args, io.Discard)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want a usage error with %q", tc.args, err, tc.want)
		}
	}
	// Two free ports (port 0) are not the same port.
	if _, err := parseArgs([]string{"--insecure", "--driver-api-address", "127.0.0.1:0", "--grpc-rere-fleet-api-address", "127.0.0.1:0"}, io.Discard); err != nil {
		t.Errorf("two :0 addresses: %v", err)
	}
}
