package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
)

func TestShutdownGraceFlag(t *testing.T) {
	c, err := parseArgs([]string{"--insecure"}, io.Discard)
	if err != nil || c.shutdownGrace != defaultShutdownGrace {
		t.Fatalf("default: %v %v, want %v", c, err, defaultShutdownGrace)
	}
	for _, v := range []string{"0", "30s", "1h"} {
		if _, err := parseArgs([]string{"--insecure", "--shutdown-grace", v}, io.Discard); err != nil {
			t.Errorf("--shutdown-grace %s: %v", v, err)
		}
	}
	for _, v := range []string{"-1s", "2h"} {
		_, err := parseArgs([]string{"--insecure", "--shutdown-grace", v}, io.Discard)
		var ue *cli.UsageError
		d, _ := time.ParseDuration(v)
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--shutdown-grace "+d.String()+": must be from 0 to 1h0m0s") {
			t.Errorf("--shutdown-grace %s: %v, want a usage error naming the range", v, err)
		}
	}
}
