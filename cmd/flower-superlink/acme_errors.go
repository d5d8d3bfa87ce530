package main

import (
	"errors"
	"fmt"

	"github.com/sepal-fl/sepal/acme"
)

// obtainError names the flag behind a failed ACME start-up where one is
// clearly at fault: --acme-ca-root when the CA's own HTTPS certificate is
// not trusted (caRoot is its value, "" for the system roots), --acme-ca
// when the CA could not be reached otherwise.
func obtainError(err error, caRoot string) error {
	switch {
	case errors.Is(err, acme.ErrCAUntrusted) && caRoot == "":
		return fmt.Errorf("--acme-ca-root: %w; the CA root file is --acme-ca-root FILE (without it the system roots are trusted; for pebble, test/certs/pebble.minica.pem)", err)
	case errors.Is(err, acme.ErrCAUntrusted):
		return fmt.Errorf("--acme-ca-root %s: %w; that file lacks the roots of the CA's HTTPS certificate", caRoot, err)
	case errors.Is(err, acme.ErrCAUnreachable):
		return fmt.Errorf("--acme-ca: %w", err)
	}
	return err
}
