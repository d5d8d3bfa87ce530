package main

import (
	"errors"
	"fmt"

	"github.com/sepal-fl/sepal/acme"
)

// obtainError names the flag behind a failed ACME start-up where one is
// clearly at fault: --acme-ca when the CA itself could not be reached.
func obtainError(err error) error {
	if errors.Is(err, acme.ErrCAUnreachable) {
		return fmt.Errorf("--acme-ca: %w", err)
	}
	return err
}
