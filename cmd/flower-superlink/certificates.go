package main

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
)

// certificatesFlag is the Flower 1.8.0 flag that takes three values:
//
//	--certificates CA_CERT SERVER_CERT PRIVATE_KEY
//
// pflag has no flag with three values, so splitCertificates takes it out of
// the arguments before pflag parses the rest. It is still registered (as a
// certificatesValue) so that --help shows it with its metavars.
const (
	certificatesFlag    = "certificates"
	certificatesMetavar = "CA_CERT SERVER_CERT PRIVATE_KEY"
	certificatesForm    = "--" + certificatesFlag + " " + certificatesMetavar
)

// certificatesValue shows --certificates in the usage with its three
// metavars. Its Set is only reached if the pre-scan missed the flag, which
// it does not; it refuses rather than take a single value.
type certificatesValue struct{ files []string }

func (v *certificatesValue) String() string { return strings.Join(v.files, " ") }
func (v *certificatesValue) Type() string   { return certificatesMetavar }
func (v *certificatesValue) Set(string) error {
	return fmt.Errorf("takes three values: %s", certificatesForm)
}

// splitCertificates takes --certificates and its three values out of args
// (arguments without the program name) and returns them apart from the
// rest, which pflag parses. Both "--certificates A B C" and
// "--certificates=A B C" are accepted. files is nil when the flag is absent.
//
// fs tells which other flags take a value, so that a value such as
// "--database --certificates" is left to pflag rather than taken for the
// flag; arguments after "--" are left alone. A missing value, a value that
// looks like a flag, or the flag given twice is a *cli.UsageError that shows
// the right form.
func splitCertificates(fs *pflag.FlagSet, args []string) (files, rest []string, err error) {
	rest = make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, inline, hasInline := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || name != certificatesFlag {
			rest = append(rest, a)
			// A long flag that takes a value in the next argument: keep the
			// two together so the value is never read as a flag of ours.
			if strings.HasPrefix(a, "--") && !hasInline && i+1 < len(args) {
				if f := fs.Lookup(name); f != nil && f.NoOptDefVal == "" {
					i++
					rest = append(rest, args[i])
				}
			}
			continue
		}
		if files != nil {
			return nil, nil, cli.Usagef("--%s given twice; give it once: %s", certificatesFlag, certificatesForm)
		}
		var vals []string
		if hasInline {
			vals = append(vals, inline)
		}
		for len(vals) < 3 && i+1 < len(args) && !looksLikeFlag(args[i+1]) {
			i++
			vals = append(vals, args[i])
		}
		if len(vals) < 3 {
			if i+1 < len(args) && looksLikeFlag(args[i+1]) && args[i+1] != "--" {
				return nil, nil, cli.Usagef("--%s needs three values but got %d before %s: %s", certificatesFlag, len(vals), args[i+1], certificatesForm)
			}
			return nil, nil, cli.Usagef("--%s needs three values but got %d: %s", certificatesFlag, len(vals), certificatesForm)
		}
		for _, v := range vals {
			if v == "" {
				return nil, nil, cli.Usagef("--%s has an empty value: %s", certificatesFlag, certificatesForm)
			}
		}
		files = vals
	}
	return files, rest, nil
}

// looksLikeFlag reports whether a is a flag (or "--") rather than a file
// path. A lone "-" is not a flag, but it is not a usable file either; Check
// reports it by name.
func looksLikeFlag(a string) bool {
	return len(a) > 1 && a[0] == '-'
}
