// Package certfix words the fixes of certificate file errors for the
// commands' users, with the flower-certs command line that makes each file
// anew.
package certfix

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/cli"
)

// keyTypes is what flower-certs says of the key types it makes, after a
// key too weak to use.
const keyTypes = " (ECDSA P-256 by default, or --key-type rsa-2048)"

// Remedy returns the words for r, a remedy certfile suggests for the file
// at path, with the flower-certs command that does it, or "" for one that
// flower-certs does not do (certfile's words stay). It fits
// certfile.FileSourceOptions.Remedies and FileError.Worded.
func Remedy(r certfile.Remedy, path string) string {
	switch r {
	case certfile.RemedyIssueServer:
		return r.String() + ` with "flower-certs --force"`
	case certfile.RemedyIssueServerKey:
		return r.String() + ` with "flower-certs --force"` + keyTypes
	case certfile.RemedyIssueServerNames:
		return `issue one with names, such as "flower-certs --force --host NAME"`
	case certfile.RemedyWriteAgain:
		return r.String() + ` (for example with "flower-certs --force")`
	case certfile.RemedyNewCA:
		return `make a new CA with "flower-certs --new-ca" and give clients the new ca.crt`
	case certfile.RemedyIssueClient:
		return r.String() + ` with "flower-certs node --force NAME" (or "flower-certs serverapp --force NAME")`
	case certfile.RemedyIssueClientKey:
		return certfile.RemedyIssueClient.String() + ` with "flower-certs node --force NAME" (or "flower-certs serverapp --force NAME")` + keyTypes
	case certfile.RemedyWriteCRL:
		return r.String() + " with " + crlCommand(path)
	case certfile.RemedyCompleteWrite:
		return fmt.Sprintf(`run "flower-certs --dir %s" to complete it`, cli.ShellQuote(filepath.Dir(path)))
	}
	return ""
}

// crlCommand is the flower-certs command that writes an empty CRL of the
// CA when the CRL at path is missing or another CA's: flower-certs revoke
// without a NAME, in the CA's folder (the CRL's folder, when it is the
// crl.pem flower-certs writes there).
func crlCommand(path string) string {
	dir := "CA_FOLDER"
	if filepath.Base(path) == "crl.pem" {
		dir = filepath.Dir(path)
	}
	return fmt.Sprintf("%q", "flower-certs revoke --dir "+dir)
}

// Reword returns err with the *certfile.FileError it holds worded with
// Remedy: the same text, but for the fix, unwrapping to err. Any other
// error, and nil, come back unchanged.
func Reword(err error) error {
	var fe *certfile.FileError
	if !errors.As(err, &fe) {
		return err
	}
	worded := fe.Worded(Remedy).Error()
	if worded == fe.Error() {
		return err
	}
	return &reworded{msg: strings.Replace(err.Error(), fe.Error(), worded, 1), err: err}
}

// reworded is an error whose text the command worded.
type reworded struct {
	msg string
	err error
}

func (e *reworded) Error() string { return e.msg }
func (e *reworded) Unwrap() error { return e.err }
