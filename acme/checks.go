package acme

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"unicode"
)

// domainChars says why name (lower case, trimmed) holds something no
// domain name holds, naming what it is instead when that is clear (a URL,
// an address with a port, an e-mail address), or "".
func domainChars(name string) string {
	switch {
	case strings.Contains(name, "://"):
		return "it is a URL; give the domain name alone, such as superlink.example.org"
	case strings.Contains(name, "@"):
		return "it is an e-mail address; give the domain name the certificate is for (the account's address is a separate setting)"
	case strings.Count(name, ":") == 1 && net.ParseIP(name) == nil:
		return "it has a port; give the domain name alone (the CA always connects to port 443 or 80)"
	case strings.Contains(name, "/"):
		return "it has a path; give the domain name alone, such as superlink.example.org"
	}
	for _, r := range name {
		switch {
		case unicode.IsSpace(r):
			return "it contains a space; give one domain name per flag, without spaces"
		case r == '_':
			return "it contains an underscore, which host names may not hold (use a hyphen)"
		case r > unicode.MaxASCII:
			return "it is not ASCII; give its punycode (xn--) form"
		case !(r == '-' || r == '.' || r == '*' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9'):
			if net.ParseIP(name) != nil {
				return ""
			}
			return fmt.Sprintf("the character %q cannot be part of a domain name (letters, digits, hyphens and dots only)", r)
		}
	}
	return ""
}

// ValidateEmail returns an error saying why addr cannot be the contact
// address of an ACME account, or nil. "" is valid: the address is
// optional. The address must be a bare one (name@example.org, no display
// name, no "mailto:") whose domain is a full DNS name.
func ValidateEmail(addr string) error {
	bad := func(why string) error { return fmt.Errorf("e-mail address %q: %s", addr, why) }
	switch {
	case addr == "":
		return nil
	case strings.HasPrefix(strings.ToLower(addr), "mailto:"):
		return bad("give the address without mailto:, such as ops@example.org")
	case !strings.Contains(addr, "@"):
		return bad("it has no @; give an address such as ops@example.org")
	}
	a, err := mail.ParseAddress(addr)
	if err != nil {
		return bad("it is not an e-mail address; give one such as ops@example.org")
	}
	if a.Name != "" || a.Address != addr {
		return bad("give the bare address, such as ops@example.org, without a name or angle brackets")
	}
	domain := normalize(addr[strings.LastIndexByte(addr, '@')+1:])
	if why := validDomain(domain); why != "" {
		return bad(fmt.Sprintf("its domain %q is not valid: %s", domain, why))
	}
	return nil
}

// CheckStorage refuses a storage folder that others could use to put their
// own account key or certificates in place: one that users other than its
// owner may write to, or one owned by another user than the one running.
// The error names the folder, its mode or owner, and the command that
// fixes it. A folder that does not exist is an error too (create it 0700
// first). On systems without Unix owners only the mode is checked.
func CheckStorage(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("storage folder: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("storage folder %s is not a folder", dir)
	}
	if m := fi.Mode().Perm(); m&0o022 != 0 {
		return fmt.Errorf("storage folder %s can be written by other users (mode %04o), who could put their own account key or certificates there: chmod 700 %s",
			dir, m, dir)
	}
	if uid, ok := ownerUID(fi); ok && uid != os.Geteuid() {
		owner := fmt.Sprint(uid)
		if u, err := user.LookupId(owner); err == nil {
			owner = fmt.Sprintf("%s (uid %d)", u.Username, uid)
		}
		me := fmt.Sprint(os.Geteuid())
		if u, err := user.Current(); err == nil {
			me = u.Username
		}
		return fmt.Errorf("storage folder %s belongs to another user, %s, who could replace the account key or the certificates: use a folder of your own, or make it yours with: chown -R %s %s",
			dir, owner, me, dir)
	}
	return nil
}

// ErrCAUnreachable is matched (errors.Is) by the *ObtainError of a start-up
// that failed because the ACME CA itself could not be reached: its host
// name does not resolve, nothing answers at its address, or its HTTPS
// certificate is not trusted. The domain's DNS and ports played no part.
var ErrCAUnreachable = errors.New("the ACME CA cannot be reached")

// ErrCAUntrusted is matched (errors.Is), beside ErrCAUnreachable, by the
// *ObtainError of a start-up that failed because the HTTPS certificate of
// the ACME CA itself is not trusted: the CA root file (Options.CARootFile,
// or the system roots without one) lacks the roots it chains to. Start-up
// gives up at once on it: no retry trusts the CA more.
var ErrCAUntrusted = errors.New("the ACME CA's HTTPS certificate is not trusted")

// caRequest returns the failure of a request to the host of the CA at
// caURL that err holds, or nil.
func caRequest(err error, caURL string) (*url.Error, *url.URL) {
	ca, perr := url.Parse(caURL)
	if perr != nil {
		return nil, nil
	}
	var ue *url.Error
	if !errors.As(err, &ue) {
		return nil, nil
	}
	if u, perr := url.Parse(ue.URL); perr != nil || !strings.EqualFold(u.Host, ca.Host) {
		return nil, nil
	}
	return ue, ca
}

// caUntrusted reports whether err is a request to the CA at caURL that
// failed on the CA's HTTPS certificate.
func caUntrusted(err error, caURL string) bool {
	if ue, _ := caRequest(err, caURL); ue != nil {
		var unknown x509.UnknownAuthorityError
		var verify *tls.CertificateVerificationError
		return errors.As(err, &unknown) || errors.As(err, &verify)
	}
	return false
}

// caUnreachable says why err shows that the CA at caURL could not be
// reached (the failure of a request to the CA's host), or "".
func caUnreachable(err error, caURL string) string {
	ue, ca := caRequest(err, caURL)
	if ue == nil {
		return ""
	}
	var dns *net.DNSError
	var op *net.OpError
	var verify *tls.CertificateVerificationError
	switch {
	case errors.As(err, &dns):
		return fmt.Sprintf("its host name %s does not resolve (%s)", ca.Hostname(), dns.Err)
	case caUntrusted(err, caURL):
		issuer := ""
		if errors.As(err, &verify) && len(verify.UnverifiedCertificates) > 0 {
			issuer = fmt.Sprintf(" (issued by %q)", verify.UnverifiedCertificates[0].Issuer.String())
		}
		return fmt.Sprintf("its HTTPS certificate%s is not trusted here (x509: certificate signed by unknown authority)", issuer)
	case errors.As(err, &op) && op.Op == "dial":
		cause := op.Err.Error()
		if se, ok := op.Err.(*os.SyscallError); ok {
			cause = se.Err.Error()
		}
		return fmt.Sprintf("nothing answers at %s (%s)", ca.Host, cause)
	case ue.Timeout():
		return fmt.Sprintf("%s did not answer in time", ca.Host)
	}
	return ""
}

// userHome is $HOME, else the home folder of the running user in the
// user database (for a service started without HOME), else "".
func userHome() string {
	if h, err := os.UserHomeDir(); err == nil && usableHome(h) {
		return h
	}
	if u, err := user.Current(); err == nil && usableHome(u.HomeDir) {
		return u.HomeDir
	}
	return ""
}

// usableHome tells whether h can hold the storage: not "/" (systemd's HOME
// for DynamicUser=), and an existing folder (not /nonexistent, nobody's).
func usableHome(h string) bool {
	if h == "" || h == "/" {
		return false
	}
	fi, err := os.Stat(h)
	return err == nil && fi.IsDir()
}

// systemStorage is the storage folder when the user has no home folder:
// $STATE_DIRECTORY/acme under systemd's StateDirectory=, else
// /var/lib/sepal/acme.
func systemStorage() string {
	if d, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "acme")
	}
	return filepath.Join(string(filepath.Separator), "var", "lib", "sepal", "acme")
}
