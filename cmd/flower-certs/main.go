// Command flower-certs makes the certificates of a research setup, in place
// of Flower's generate.sh: a private CA and a server certificate issued by
// it, written to certificates/ca.crt, ca.key, server.pem and server.key.
//
//	flower-certs
//	flower-superlink --certificates certificates/ca.crt certificates/server.pem certificates/server.key
//	flower-client-app client:app --root-certificates certificates/ca.crt --server 127.0.0.1:9092
//
// It never overwrites a file unless asked: a second run checks that the
// files still work together and changes nothing. An existing CA in the
// folder is reused, so clients keep their ca.crt; --force issues a new
// server certificate from it, and --new-ca replaces the CA too. The files
// are written as one set (certfile.WriteSet): a run killed at any point
// leaves the old set or the new one, and the next run completes or undoes
// the interrupted write and says so.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

const name = "flower-certs"

var command = cli.Command{
	Name:        name,
	Synopsis:    "make a CA and a server certificate for a research setup (replaces Flower's generate.sh)",
	Usage:       "[flags]",
	NoLogFormat: true, // no log lines of its own
	Examples: []string{
		"flower-certs                                   # writes certificates/ca.crt, ca.key, server.pem, server.key",
		"flower-certs --host superlink.lab.example.org --host 10.0.0.5",
		"flower-certs --force --host 10.0.0.6           # new server certificate, same CA: clients keep ca.crt",
		"flower-certs --new-ca                          # new CA and server certificate: clients need the new ca.crt",
		"flower-certs --key-type rsa-4096 --days 90 --dir /etc/sepal/certificates",
	},
}

// File names inside --dir, the ones Flower's generate.sh writes.
const (
	caCertName     = "ca.crt"
	caKeyName      = "ca.key"
	serverCertName = "server.pem"
	serverKeyName  = "server.key"
)

// File and folder modes.
const (
	dirMode  fs.FileMode = 0o700
	keyMode  fs.FileMode = 0o600
	certMode fs.FileMode = 0o644
)

func main() {
	cli.Exit(name, run(os.Args[1:], os.Stdout, os.Stderr))
}

// config is the parsed command line.
type config struct {
	dir       string
	hosts     []string
	days      int
	keyType   selfsigned.KeyType
	force     bool
	newCA     bool
	shaped    bool     // --host, --days or --key-type was given
	daysGiven bool     // --days was given
	args      []string // as given, to suggest the same command with --force
}

// parseArgs parses the command line (without the program name); --help
// prints the usage to out.
// checkIssueFlags checks the flags every certificate-issuing command
// shares: --key-type (returned parsed), --days and --dir (what it names,
// for the message).
func checkIssueFlags(keyType string, days int, dir, dirIs string) (selfsigned.KeyType, error) {
	kt, err := selfsigned.ParseKeyType(keyType)
	if err != nil {
		return "", cli.Usagef("--key-type %q: use one of ecdsa-p256, rsa-2048, rsa-3072, rsa-4096, ed25519", keyType)
	}
	if days < 1 {
		return "", cli.Usagef("--days %d: must be 1 or more", days)
	}
	if dir == "" {
		return "", cli.Usagef("--dir is empty: give %s, such as certificates", dirIs)
	}
	return kt, nil
}

func parseArgs(args []string, out io.Writer) (*config, error) {
	c := &config{args: args}
	fs := cli.NewFlagSet(command, out)
	var keyType string
	fs.StringVar(&c.dir, "dir", "certificates", "folder for ca.crt, ca.key, server.pem and server.key (made 0700)")
	fs.StringSliceVar(&c.hosts, "host", nil, "extra DNS name or IP address for the server certificate, beside localhost, 127.0.0.1 and ::1 (repeatable, or comma-separated)")
	fs.IntVar(&c.days, "days", 365, "validity of the server certificate in days (a new CA is made for 10 years, or longer to cover it; by default a reused CA that ends sooner ends it too)")
	fs.StringVar(&keyType, "key-type", string(selfsigned.ECDSAP256), "key type: ecdsa-p256, rsa-2048, rsa-3072, rsa-4096 or ed25519 (for a reused CA, the server key only)")
	fs.BoolVar(&c.force, "force", false, "issue a new server certificate and key over existing ones; the CA in --dir is kept")
	fs.BoolVar(&c.newCA, "new-ca", false, "make a new CA as well, replacing ca.crt and ca.key (clients need the new ca.crt); implies --force")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	if err := cli.NoArgs(fs, "a host goes after --host"); err != nil {
		return nil, err
	}
	c.daysGiven = fs.Changed("days")
	c.shaped = fs.Changed("host") || fs.Changed("days") || fs.Changed("key-type")
	kt, err := checkIssueFlags(keyType, c.days, c.dir, "a folder")
	if err != nil {
		return nil, err
	}
	c.keyType = kt
	for i, h := range c.hosts {
		c.hosts[i] = strings.TrimSpace(h)
		if c.hosts[i] == "" {
			return nil, cli.Usagef("--host is empty: give a DNS name or an IP address")
		}
	}
	if c.newCA {
		c.force = true
	}
	return c, nil
}

// run is the whole command. A certificate file's error names the
// flower-certs command that fixes it (certfix).
func run(args []string, stdout, stderr io.Writer) (err error) {
	defer func() { err = certfix.Reword(err) }()
	if sub, rest := subcommand(args); sub != nil {
		return sub(rest, stdout, stderr)
	}
	c, err := parseArgs(args, stdout)
	if err != nil {
		return err
	}
	return generate(c, time.Now(), stdout, stderr)
}

// paths of the four files in the folder.
type paths struct{ caCert, caKey, serverCert, serverKey string }

func pathsIn(dir string) paths {
	return paths{
		caCert:     filepath.Join(dir, caCertName),
		caKey:      filepath.Join(dir, caKeyName),
		serverCert: filepath.Join(dir, serverCertName),
		serverKey:  filepath.Join(dir, serverKeyName),
	}
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}

// generate does the work: it decides what to make, makes it all in memory,
// then writes the files. On an error nothing is written, or (a failed
// write) what was written is complete and says so.
func generate(c *config, now time.Time, stdout, stderr io.Writer) error {
	// Whole seconds, as certificates hold them: a date compared with one
	// read back from a certificate must not differ by a fraction.
	now = now.Truncate(time.Second)
	p := pathsIn(c.dir)

	// A run killed while it wrote is completed (it had written every file)
	// or undone (it had not), before anything is decided.
	rec, err := certfile.RecoverSet(c.dir)
	if err != nil {
		return fmt.Errorf("%w; nothing was written", err)
	}
	if !rec.Empty() {
		fmt.Fprintf(stdout, "%s: an earlier run was stopped while writing: %s.\n", c.dir, rec)
	}
	have := map[string]bool{}
	for _, f := range []string{p.caCert, p.caKey, p.serverCert, p.serverKey} {
		ok, err := exists(f)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		have[f] = ok
	}

	// Half states are refused before anything is written.
	if !c.newCA && have[p.caCert] != have[p.caKey] {
		present, missing := p.caCert, p.caKey
		if have[p.caKey] {
			present, missing = p.caKey, p.caCert
		}
		return fmt.Errorf("%s exists but %s does not: restore %s, or run %s --new-ca to make a new CA "+
			"(every client then needs the new %s)", present, missing, missing, name, p.caCert)
	}
	if !c.force && (have[p.serverCert] || have[p.serverKey]) {
		if have[p.serverCert] != have[p.serverKey] {
			present, missing := p.serverCert, p.serverKey
			if have[p.serverKey] {
				present, missing = p.serverKey, p.serverCert
			}
			return fmt.Errorf("%s exists but %s does not: run %s --force to issue a new server certificate and key",
				present, missing, name)
		}
		// They must still be a working set: a half-done edit by hand (or
		// a writer of another tool, killed) is named, not passed over.
		if err := checkExisting(p, have, now); err != nil {
			return err
		}
		if w := certfile.KeyModeWarning(p.serverKey); w != "" {
			fmt.Fprintf(stderr, "%s: note: %s\n", name, w)
		}
		fmt.Fprintf(stdout, "%s and %s exist and match; nothing changed.\n", p.serverCert, p.serverKey)
		fmt.Fprintf(stdout, "To issue a new server certificate from the same CA (clients keep %s):\n  %s\n",
			p.caCert, shellJoin(append([]string{name}, append(c.args, "--force")...)))
		fmt.Fprintf(stdout, "To replace the CA as well (every client then needs the new %s):\n  %s\n",
			p.caCert, shellJoin(append([]string{name}, append(c.args, "--new-ca")...)))
		if c.shaped {
			fmt.Fprintf(stdout, "(--host, --days and --key-type shape new certificates only: nothing was issued.)\n")
		}
		printUsage(stdout, p, existingNames(p.serverCert))
		return nil
	}

	// Make everything in memory first: a bad --host or --days writes nothing.
	var ca *selfsigned.CA
	reuse := have[p.caCert] && have[p.caKey] && !c.newCA
	if reuse {
		if ca, err = certfile.LoadCA(p.caCert, p.caKey); err != nil {
			return fmt.Errorf("%w (to replace the CA, run %s --new-ca)", err, name)
		}
		if now.After(ca.Cert.NotAfter) {
			return fmt.Errorf("the CA in %s expired on %s: run %s --new-ca (every client then needs the new %s)",
				p.caCert, ca.Cert.NotAfter.UTC().Format(time.DateOnly), name, p.caCert)
		}
	}
	notAfter := now.Add(time.Duration(c.days) * 24 * time.Hour)
	if !reuse {
		// A new CA lasts 10 years, and outlives the server certificate it
		// issues by a day at least (--days 3650 and more).
		caNotAfter := now.Add(selfsigned.DefaultCAValidity)
		if !caNotAfter.After(notAfter) {
			caNotAfter = notAfter.Add(24 * time.Hour)
		}
		if ca, err = selfsigned.NewCA(selfsigned.CAOptions{KeyType: c.keyType, NotAfter: caNotAfter}); err != nil {
			return err
		}
	}
	var clamped bool
	if notAfter.After(ca.Cert.NotAfter) && reuse && !c.daysGiven {
		// The default --days meets a CA that ends sooner (generate.sh makes
		// CAs for 365 days): end with the CA rather than refuse.
		notAfter, clamped = ca.Cert.NotAfter, true
	}
	if notAfter.After(ca.Cert.NotAfter) {
		maxDays := int(ca.Cert.NotAfter.Sub(now).Hours() / 24)
		return cli.Usagef("--days %d: the server certificate would outlive its CA (%s, valid until %s): use --days %d or fewer, or make a new CA with --new-ca",
			c.days, p.caCert, ca.Cert.NotAfter.UTC().Format(time.DateOnly), maxDays)
	}
	pair, err := ca.IssueServer(selfsigned.ServerOptions{Hosts: c.hosts, KeyType: c.keyType, NotAfter: notAfter})
	if err != nil {
		return cli.Usagef("--host: %v", err)
	}

	// Write: the files of the set all together, or none of them.
	set := &fileSet{dir: c.dir}
	if !reuse {
		set.add(caKeyName, ca.KeyPEM, keyMode, "CA private key: keep it private, it stays here")
		set.add(caCertName, ca.CertPEM, certMode, fmt.Sprintf("CA certificate (%s, valid until %s): give it to every client",
			certfile.KeyAlgorithm(ca.Cert.PublicKey), ca.Cert.NotAfter.UTC().Format(time.DateOnly)))
	}
	crlFile := filepath.Join(c.dir, crlName)
	if !reuse {
		// The CRL beside the old CA is refused beside the new one (the
		// SuperLink would not start): an empty one of the new CA, in the
		// same set. What the old one revoked, the new CA never issued.
		haveCRL, err := exists(crlFile)
		if err != nil {
			return err
		}
		if haveCRL {
			crl, err := ca.SignCRL(nil, nil, now)
			if err != nil {
				return err
			}
			set.add(crlName, crl.PEM, certMode, "CRL of the new CA (none revoked; it replaces the old CA's)")
		}
	}
	set.add(serverKeyName, pair.KeyPEM, keyMode, "server private key")
	set.add(serverCertName, pair.CertPEM, certMode, fmt.Sprintf("server certificate (%s, serial %s, valid until %s) for %s",
		certfile.KeyAlgorithm(pair.Leaf.PublicKey), certfmt.Serial(pair.Leaf.SerialNumber),
		pair.Leaf.NotAfter.UTC().Format(time.DateOnly), strings.Join(sans(pair.Leaf), ", ")))
	if reuse {
		if fi, err := os.Stat(p.caKey); err == nil && fi.Mode().Perm()&0o077 != 0 {
			fmt.Fprintf(stderr, "%s: note: the CA private key %s is open to other users (mode %04o); anyone who reads it can issue certificates your clients trust: chmod 600 %s\n",
				name, p.caKey, fi.Mode().Perm(), cli.ShellQuote(p.caKey))
		}
		fmt.Fprintf(stdout, "Reusing the CA in %s (%q, %s, valid until %s); clients keep it.\n",
			p.caCert, subjectName(ca.Cert), certfile.KeyAlgorithm(ca.Cert.PublicKey), ca.Cert.NotAfter.UTC().Format(time.DateOnly))
	}
	if err := set.write(stdout); err != nil {
		return err
	}
	if fi, err := os.Stat(c.dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(stderr, "%s: note: %s is open to other users (mode %04o); keys are 0600, but consider: chmod 700 %s\n",
			name, c.dir, fi.Mode().Perm(), cli.ShellQuote(c.dir))
	}
	if clamped {
		fmt.Fprintf(stdout, "The server certificate ends with its CA on %s, before %d days; %s --new-ca makes a CA for 10 years (clients then need the new %s).\n",
			ca.Cert.NotAfter.UTC().Format(time.DateOnly), c.days, name, p.caCert)
	}
	if !reuse {
		printReissue(stdout, c.dir)
	}
	if have[p.serverCert] {
		fmt.Fprintf(stdout, "A running SuperLink picks up the new certificate within its poll interval, or at once on SIGHUP.\n")
	}
	printUsage(stdout, p, sans(pair.Leaf))
	return nil
}

// printReissue says which client certificates of dir a new CA leaves
// behind (the SuperLink refuses them now), with the command that issues
// them again.
func printReissue(stdout io.Writer, dir string) {
	for _, role := range []string{transport.RoleNode, transport.RoleServerApp} {
		files, _ := filepath.Glob(filepath.Join(clientDir(dir, role), "*.pem"))
		var names []string
		for _, f := range files {
			n := strings.TrimSuffix(filepath.Base(f), ".pem")
			if transport.ValidName(n) == nil {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			continue
		}
		fmt.Fprintf(stdout, "The %s certificates in %s were issued by the old CA and are refused from now on: issue them again with\n  %s\n",
			transport.RoleName(role), clientDir(dir, role), shellJoin(append([]string{name, role, "--force", "--dir", dir}, names...)))
	}
}

// checkExisting refuses a folder whose files do not work together: a CA
// certificate and key that do not match, or a server certificate and key
// that do not match, are not valid now, or do not chain to the CA beside
// them. have tells which of the four files exist.
func checkExisting(p paths, have map[string]bool, now time.Time) error {
	if have[p.caCert] && have[p.caKey] {
		if _, err := certfile.LoadCA(p.caCert, p.caKey); err != nil {
			return fmt.Errorf("the CA in %s does not work: %w; nothing changed", filepath.Dir(p.caCert), err)
		}
	}
	caFile := ""
	if have[p.caCert] {
		caFile = p.caCert
	}
	if _, err := certfile.Check(caFile, p.serverCert, p.serverKey, now); err != nil {
		return fmt.Errorf("the server certificate in %s does not work: %w; nothing changed", filepath.Dir(p.serverCert), err)
	}
	return nil
}

// printUsage prints the command lines that use the files, with the flags
// that require the client certificates of the folder when it holds some.
// The apps dial the first name of the certificate beyond the defaults,
// else 127.0.0.1.
func printUsage(stdout io.Writer, p paths, names []string) {
	host := "127.0.0.1"
	for _, n := range names {
		if !slices.Contains(selfsigned.DefaultHosts, n) && !strings.HasPrefix(n, "*") {
			host = n
			break
		}
	}
	link := []string{"flower-superlink", "--certificates", p.caCert, p.serverCert, p.serverKey}
	if flags := clientAuthFlags(p, filepath.Dir(p.caCert), ""); flags != nil {
		// The folder holds client certificates: a SuperLink that requires
		// them (mutual TLS), as before.
		link = append(link, flags...)
	}
	fmt.Fprintf(stdout, "\nStart the SuperLink with:\n  %s\n", shellJoin(link))
	fmt.Fprintf(stdout, "Connect a client app with:\n  %s\n", shellJoin([]string{"flower-client-app", "client:app", "--root-certificates", p.caCert, "--server", net.JoinHostPort(host, "9092")}))
	fmt.Fprintf(stdout, "Run a server app with:\n  %s\n", shellJoin([]string{"flower-server-app", "server:app", "--root-certificates", p.caCert, "--server", net.JoinHostPort(host, "9091")}))
}

// existingNames returns the SANs of the certificate in path, or nil.
func existingNames(path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil
	}
	return sans(c)
}

func sans(c *x509.Certificate) []string {
	s := append([]string{}, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		s = append(s, ip.String())
	}
	return s
}

// subjectName is the common name of c, or its whole subject without one.
func subjectName(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	return c.Subject.String()
}

// shellJoin quotes each word that needs it for a POSIX shell.
func shellJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = cli.ShellQuote(w)
	}
	return strings.Join(q, " ")
}
