package main

// This file is flower-certs as the CA of mutual TLS: the subcommands that
// issue client certificates (node, serverapp) and revoke them (revoke).

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// crlName is the CRL's file name in --dir.
const crlName = "crl.pem"

// defaultServerAppName names the ServerApp certificate when none is given.
const defaultServerAppName = "serverapp"

func init() {
	// The subcommands, in the main usage (set here to keep them in one file).
	command.Usage = "[flags]\n  " + name + " node NAME... [flags]      # a certificate per SuperNode (mutual TLS)\n  " +
		name + " serverapp [NAME] [flags]  # a ServerApp certificate\n  " +
		name + " revoke NAME... [flags]    # revoke node certificates (--serverapp for ServerApps) into crl.pem"
	command.Examples = append(command.Examples,
		"flower-certs node node-1 node-2                # node certificates: certificates/nodes/node-1.pem, node-1.key, ...",
		"flower-certs serverapp                         # a ServerApp certificate: certificates/serverapps/serverapp.pem, .key",
		"flower-certs revoke node-2                     # node-2 is refused from now on (certificates/crl.pem)",
	)
}

// subcommands are the words run dispatches on.
var subcommands = map[string]func(args []string, stdout, stderr io.Writer) error{
	transport.RoleNode:      func(a []string, o, e io.Writer) error { return issueClients(transport.RoleNode, a, o, e) },
	transport.RoleServerApp: func(a []string, o, e io.Writer) error { return issueClients(transport.RoleServerApp, a, o, e) },
	"revoke":                revoke,
}

// valueFlags are the flags of flower-certs and its subcommands that take
// a value in the next argument.
var valueFlags = map[string]bool{"--dir": true, "--days": true, "--key-type": true, "--host": true, "--serial": true}

// subcommand finds the subcommand word among args, the first argument that
// is not a flag or a flag's value (so that "flower-certs --dir d node x"
// works as "flower-certs node --dir d x"), and returns it with the other
// arguments; nil when the first such argument is not a subcommand.
func subcommand(args []string) (func(args []string, stdout, stderr io.Writer) error, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return nil, nil
		case strings.HasPrefix(a, "-"):
			if valueFlags[a] {
				i++
			}
			continue
		}
		f, ok := subcommands[a]
		if !ok {
			return nil, nil
		}
		return f, append(args[:i:i], args[i+1:]...)
	}
	return nil, nil
}

// clientDir is the folder of a role's certificates inside --dir.
func clientDir(dir, role string) string { return filepath.Join(dir, role+"s") }

// clientPaths are the certificate and key of one client.
func clientPaths(dir, role, clientName string) (cert, key string) {
	d := clientDir(dir, role)
	return filepath.Join(d, clientName+".pem"), filepath.Join(d, clientName+".key")
}

var nodeCommand = cli.Command{
	Name:        name + " node",
	Synopsis:    "issue a client certificate per SuperNode from the CA in --dir, for a SuperLink that requires them (--fleet-api-client-ca)",
	Usage:       "NAME... [flags]",
	NoLogFormat: true, // no log lines of its own
	Examples: []string{
		"flower-certs node node-1 node-2      # certificates/nodes/node-1.pem and node-1.key, ...",
		"flower-certs node --force node-1     # a new certificate and key for node-1 (revoke the old one with flower-certs revoke)",
		"flower-certs node --days 90 --dir /etc/sepal/certificates lab-7",
	},
}

var serverAppCommand = cli.Command{
	Name:        name + " serverapp",
	Synopsis:    "issue a ServerApp client certificate from the CA in --dir, for a SuperLink that requires them (--driver-api-client-ca)",
	Usage:       "[NAME] [flags]",
	NoLogFormat: true, // no log lines of its own
	Examples: []string{
		"flower-certs serverapp               # certificates/serverapps/serverapp.pem and serverapp.key",
		"flower-certs serverapp experiments   # another ServerApp, with its own name",
	},
}

var revokeCommand = cli.Command{
	Name:        name + " revoke",
	Synopsis:    "revoke client certificates into the CRL certificates/crl.pem, signed by the CA; a SuperLink with --client-crl refuses them from its next reload (poll or SIGHUP), without a restart",
	Usage:       "NAME... [flags]",
	NoLogFormat: true, // no log lines of its own
	Examples: []string{
		"flower-certs revoke node-2                 # the node certificate certificates/nodes/node-2.pem",
		"flower-certs revoke --serverapp serverapp  # a ServerApp certificate",
		"flower-certs revoke --serial 3A0F...       # a certificate by its serial (openssl x509 -serial -noout -in FILE)",
	},
}

// clientFlags are the flags of node and serverapp.
type clientFlags struct {
	dir     string
	days    int
	keyType selfsigned.KeyType
	force   bool
	names   []string
}

func parseClientArgs(role string, args []string, out io.Writer) (*clientFlags, error) {
	cmd := nodeCommand
	if role == transport.RoleServerApp {
		cmd = serverAppCommand
	}
	fs := cli.NewFlagSet(cmd, out)
	c := &clientFlags{}
	var keyType string
	fs.StringVar(&c.dir, "dir", "certificates", "folder of the CA (ca.crt, ca.key, made by flower-certs); the certificates go to its "+role+"s/ folder (made 0700)")
	fs.IntVar(&c.days, "days", 365, "validity in days (a CA that ends sooner ends it too, unless --days is given)")
	fs.StringVar(&keyType, "key-type", string(selfsigned.ECDSAP256), "key type: ecdsa-p256, rsa-2048, rsa-3072, rsa-4096 or ed25519")
	fs.BoolVar(&c.force, "force", false, "issue a new certificate and key over an existing one (the old one stays valid until it expires or is revoked)")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	c.names = fs.Args()
	switch {
	case role == transport.RoleServerApp && len(c.names) == 0:
		c.names = []string{defaultServerAppName}
	case len(c.names) == 0:
		return nil, cli.Usagef("missing NAME: name each SuperNode, such as %s node node-1 node-2", name)
	}
	seen := map[string]bool{}
	for _, n := range c.names {
		if err := transport.ValidName(n); err != nil {
			return nil, cli.Usagef("%v", err)
		}
		if seen[n] {
			return nil, cli.Usagef("%q is given twice", n)
		}
		seen[n] = true
	}
	kt, err := checkIssueFlags(keyType, c.days, c.dir, "the CA's folder")
	if err != nil {
		return nil, err
	}
	c.keyType = kt
	if fs.Changed("days") {
		c.days = -c.days // given: refuse rather than clamp to the CA
	}
	return c, nil
}

// errNoCA is wrapped by loadDirCA's error when neither CA file exists.
var errNoCA = errors.New("no CA")

// loadDirCA loads the CA of dir, or says how to make one. When neither of
// its files exists the error wraps errNoCA.
func loadDirCA(dir string, now time.Time) (*selfsigned.CA, paths, error) {
	p := pathsIn(dir)
	var missing []string
	for _, f := range []string{p.caCert, p.caKey} {
		if ok, err := exists(f); err != nil {
			return nil, p, fmt.Errorf("%s: %w", f, err)
		} else if !ok {
			missing = append(missing, f)
		}
	}
	switch len(missing) {
	case 2:
		return nil, p, fmt.Errorf("%s and %s do not exist: client certificates are issued by a CA; run %s first, or give its folder with --dir: %w",
			p.caCert, p.caKey, name, errNoCA)
	case 1:
		return nil, p, fmt.Errorf("%s does not exist beside the rest of the CA: restore it, or give the CA's folder with --dir", missing[0])
	}
	ca, err := certfile.LoadCA(p.caCert, p.caKey)
	if err != nil {
		return nil, p, err
	}
	if now.After(ca.Cert.NotAfter) {
		return nil, p, fmt.Errorf("the CA in %s expired on %s: run %s --new-ca (every client and SuperLink then needs the new %s)",
			p.caCert, ca.Cert.NotAfter.UTC().Format(time.DateOnly), name, p.caCert)
	}
	return ca, p, nil
}

// issueClients is flower-certs node and flower-certs serverapp.
func issueClients(role string, args []string, stdout, stderr io.Writer) error {
	c, err := parseClientArgs(role, args, stdout)
	if err != nil {
		return err
	}
	now := time.Now()
	if err := recoverSets(stdout, c.dir, clientDir(c.dir, role)); err != nil {
		return err
	}
	ca, p, err := loadDirCA(c.dir, now)
	var newCA bool
	if errors.Is(err, errNoCA) {
		// A folder of client certificates only, as beside an ACME
		// SuperLink: a CA of their own, for 10 years.
		if ca, err = selfsigned.NewCA(selfsigned.CAOptions{KeyType: c.keyType}); err != nil {
			return err
		}
		newCA = true
	}
	if err != nil {
		return err
	}
	notAfter, clamped := now.Add(time.Duration(abs(c.days))*24*time.Hour), false
	if notAfter.After(ca.Cert.NotAfter) {
		if c.days < 0 {
			return cli.Usagef("--days %d: the certificate would outlive its CA (%s, valid until %s): use --days %d or fewer",
				-c.days, p.caCert, ca.Cert.NotAfter.UTC().Format(time.DateOnly), int(ca.Cert.NotAfter.Sub(now).Hours()/24))
		}
		notAfter, clamped = ca.Cert.NotAfter, true
	}

	crlFile := filepath.Join(c.dir, crlName)
	crl, haveCRL, err := loadCRL(stdout, ca, crlFile)
	if err != nil {
		return err
	}

	// Make everything in memory first: an error writes nothing.
	type issued struct {
		name, cert, key string
		pair            *selfsigned.Pair
		replaced        *x509.Certificate // the certificate --force replaces
	}
	var todo []issued
	var kept, usable, unusable []string
	for _, n := range c.names {
		cert, key := clientPaths(c.dir, role, n)
		haveCert, err := exists(cert)
		if err != nil {
			return err
		}
		haveKey, err := exists(key)
		if err != nil {
			return err
		}
		if (haveCert || haveKey) && !c.force {
			if why := notUsable(certfmt.ReadFirstCert(cert), ca, p.caCert, crl, now); why != "" {
				unusable = append(unusable, fmt.Sprintf("%s (%s) %s; nothing changed for %s: issue a new certificate and key with %s",
					cert, transport.Identity{Role: role, Name: n}, why, n, shellJoin([]string{name, role, "--force", "--dir", c.dir, n})))
				continue
			}
			kept = append(kept, n)
			usable = append(usable, n)
			continue
		}
		usable = append(usable, n)
		id := transport.Identity{Role: role, Name: n}
		pair, err := ca.IssueClient(selfsigned.ClientOptions{CommonName: n, OrganizationalUnit: role, URIs: []*url.URL{id.URI()},
			KeyType: c.keyType, NotAfter: notAfter})
		if err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
		it := issued{name: n, cert: cert, key: key, pair: pair}
		if haveCert {
			it.replaced = certfmt.ReadFirstCert(cert)
		}
		todo = append(todo, it)
	}

	// Write: the CA (when new) and the CRL as one set of --dir, then the
	// certificates and keys as one set of their folder. A run killed in
	// between leaves a CA and no certificate, which the next run issues.
	caSet := &fileSet{dir: c.dir}
	if newCA {
		caSet.add(caKeyName, ca.KeyPEM, keyMode, "CA private key of the client certificates: keep it private, it stays here")
		caSet.add(caCertName, ca.CertPEM, certMode, fmt.Sprintf("CA certificate (%s, valid until %s): give it to the SuperLink",
			certfile.KeyAlgorithm(ca.Cert.PublicKey), ca.Cert.NotAfter.UTC().Format(time.DateOnly)))
	}
	if !haveCRL {
		if err := addEmptyCRL(caSet, ca, crlFile, now); err != nil {
			return err
		}
	}
	if err := caSet.write(stdout); err != nil {
		return err
	}
	certSet := &fileSet{dir: clientDir(c.dir, role)}
	for _, it := range todo {
		id := transport.Identity{Role: role, Name: it.name}
		certSet.add(filepath.Base(it.key), it.pair.KeyPEM, keyMode, transport.RoleName(role)+" private key: only for "+it.name)
		certSet.add(filepath.Base(it.cert), it.pair.CertPEM, certMode, fmt.Sprintf("%s certificate %s (serial %s, valid until %s)",
			transport.RoleName(role), id, certfmt.Serial(it.pair.Leaf.SerialNumber), it.pair.Leaf.NotAfter.UTC().Format(time.DateOnly)))
	}
	if err := certSet.write(stdout); err != nil {
		return err
	}
	for _, it := range todo {
		if it.replaced != nil {
			fmt.Fprintf(stdout, "The certificate %s replaces (serial %s) stays valid until %s; to refuse it now: %s\n",
				it.cert, certfmt.Serial(it.replaced.SerialNumber), it.replaced.NotAfter.UTC().Format(time.DateOnly),
				shellJoin([]string{name, "revoke", "--dir", c.dir, "--serial", certfmt.Serial(it.replaced.SerialNumber)}))
		}
	}
	for _, n := range kept {
		cert, key := clientPaths(c.dir, role, n)
		fmt.Fprintf(stdout, "%s and %s exist; nothing changed for %s (--force issues a new certificate and key).\n", cert, key, n)
	}
	if clamped {
		fmt.Fprintf(stdout, "The certificates end with their CA on %s, before %d days.\n", ca.Cert.NotAfter.UTC().Format(time.DateOnly), c.days)
	}
	if len(usable) > 0 {
		printClientUsage(stdout, p, role, c.dir, usable)
	}
	if len(unusable) > 0 {
		return errors.New(strings.Join(unusable, "; "))
	}
	return nil
}

// notUsable says why a client certificate that exists cannot connect to a
// SuperLink that trusts ca (in caFile) and its crl (nil: none yet): "is revoked ...",
// "has expired ...", or "was issued by another CA ..."; "" when it can, or
// when there is no certificate to judge (leaf nil: a key alone).
func notUsable(leaf *x509.Certificate, ca *selfsigned.CA, caFile string, crl *x509.RevocationList, now time.Time) string {
	switch {
	case leaf == nil:
		return ""
	case !issuedBy(leaf, ca):
		return fmt.Sprintf("was issued by another CA than the one in %s (was the CA made again?)", caFile)
	case crl != nil && certfmt.Listed(crl.RevokedCertificateEntries, leaf.SerialNumber):
		return fmt.Sprintf("is revoked (serial %s is in the CRL)", certfmt.Serial(leaf.SerialNumber))
	case now.After(leaf.NotAfter):
		return fmt.Sprintf("expired on %s", leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	return ""
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// addEmptyCRL adds to set an empty CRL signed by the CA, for a folder
// without one yet (or only one of another CA), so that the SuperLink can be
// started with --client-crl from the first day and a revocation later
// needs no restart.
func addEmptyCRL(set *fileSet, ca *selfsigned.CA, path string, now time.Time) error {
	crl, err := ca.SignCRL(nil, nil, now)
	if err != nil {
		return err
	}
	set.add(filepath.Base(path), crl.PEM, certMode, "CRL (none revoked yet): give it to the SuperLink with --client-crl")
	return nil
}

// loadCRL reads the CA's CRL at path: (nil, false) when there is none, and
// also when the one there is another CA's (the CA was made again: what it
// revoked was issued by a CA the SuperLink no longer trusts), which is
// then to be replaced, as it says. A CRL that does not parse is an error.
func loadCRL(stdout io.Writer, ca *selfsigned.CA, path string) (*x509.RevocationList, bool, error) {
	if ok, err := exists(path); err != nil || !ok {
		return nil, false, err
	}
	list, err := certfile.LoadCRL(path, ca.Cert)
	switch {
	case errors.Is(err, certfile.ErrCRLIssuer):
		fmt.Fprintf(stdout, "%s is another CA's (was the CA made again?); a new CRL of this CA replaces it.\n", path)
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("%w (move it away to start a new CRL; what it revoked is then valid again)", err)
	}
	return list, true, nil
}

// printClientUsage prints the command lines that use the certificates. In a
// folder without a server certificate (client certificates beside an ACME
// SuperLink) the SuperLink's flags are printed alone, and the apps trust
// the system roots.
func printClientUsage(stdout io.Writer, p paths, role, dir string, names []string) {
	serverCert, _ := exists(p.serverCert)
	host := "127.0.0.1"
	if !serverCert {
		host = "SUPERLINK_HOST"
	}
	for _, n := range existingNames(p.serverCert) {
		if n != "localhost" && n != "127.0.0.1" && n != "::1" && !strings.HasPrefix(n, "*") {
			host = n
			break
		}
	}
	cert, key := clientPaths(dir, role, names[0])
	app, port := []string{"flower-client-app", "client:app"}, "9092"
	if role == transport.RoleServerApp {
		app, port = []string{"flower-server-app", "server:app"}, "9091"
	}
	flags := clientAuthFlags(p, dir, role)
	if serverCert {
		link := append([]string{"flower-superlink", "--certificates", p.caCert, p.serverCert, p.serverKey}, flags...)
		fmt.Fprintf(stdout, "\nStart the SuperLink so that it requires client certificates:\n  %s\n", shellJoin(link))
		app = append(app, "--root-certificates", p.caCert)
	} else {
		fmt.Fprintf(stdout, "\nAdd to the SuperLink's flags, so that it requires client certificates:\n  %s\n", shellJoin(flags))
	}
	fmt.Fprintf(stdout, "Run the %s with its certificate and key (copy them to its machine; the key stays private):\n  %s\n",
		map[string]string{transport.RoleNode: "SuperNode", transport.RoleServerApp: "ServerApp"}[role],
		shellJoin(append(app, "--server", host+":"+port, "--client-certificate", cert, "--client-key", key)))
	if len(names) > 1 {
		fmt.Fprintf(stdout, "(and likewise for %s)\n", strings.Join(names[1:], ", "))
	}
}

// clientAuthFlags are the SuperLink's flags that require the client
// certificates of dir: a client CA for every role issued so far (and for
// role, being issued, with the CRL written beside them; "" for none), and
// the CRL when there is one. Nil when dir holds no client certificates.
func clientAuthFlags(p paths, dir, role string) []string {
	var flags []string
	for _, r := range []struct{ role, flag string }{{transport.RoleNode, "--fleet-api-client-ca"}, {transport.RoleServerApp, "--driver-api-client-ca"}} {
		if fi, err := os.Stat(clientDir(dir, r.role)); r.role == role || err == nil && fi.IsDir() {
			flags = append(flags, r.flag, p.caCert)
		}
	}
	if len(flags) == 0 {
		return nil
	}
	crl := filepath.Join(dir, crlName)
	if ok, _ := exists(crl); ok || role != "" {
		flags = append(flags, "--client-crl", crl)
	}
	return flags
}

// revokeFlags are the flags of revoke.
type revokeFlags struct {
	dir       string
	serverApp bool
	serials   []string
	names     []string
}

// revoke is flower-certs revoke.
func revoke(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(revokeCommand, stdout)
	c := &revokeFlags{}
	fs.StringVar(&c.dir, "dir", "certificates", "folder of the CA (ca.crt, ca.key); the CRL is its "+crlName)
	fs.BoolVar(&c.serverApp, "serverapp", false, "the NAMEs are ServerApps (certificates in serverapps/), not nodes")
	fs.StringArrayVar(&c.serials, "serial", nil, "revoke the certificate with this serial, in hex as openssl x509 -serial prints it (repeatable), for one whose file is gone")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	c.names = fs.Args()
	missingName := cli.Usagef("missing NAME: name the node to revoke, such as %s revoke node-2 (or --serial HEX)", name)
	role := transport.RoleNode
	if c.serverApp {
		role = transport.RoleServerApp
	}
	now := time.Now()
	if err := recoverSets(stdout, c.dir); err != nil {
		return err
	}
	ca, _, err := loadDirCA(c.dir, now)
	if err != nil {
		return err
	}

	type target struct {
		what   string
		serial *big.Int
	}
	var targets []target
	for _, s := range c.serials {
		n, ok := parseSerial(s)
		if !ok {
			return cli.Usagef("--serial %q: give the serial in hex, as openssl x509 -serial -noout prints it (such as 3A0F9C...)", s)
		}
		targets = append(targets, target{"serial " + certfmt.Serial(n), n})
	}
	for _, n := range c.names {
		if err := transport.ValidName(n); err != nil {
			return cli.Usagef("%v", err)
		}
		cert, _ := clientPaths(c.dir, role, n)
		leaf := certfmt.ReadFirstCert(cert)
		if leaf == nil {
			other := transport.RoleServerApp
			if c.serverApp {
				other = transport.RoleNode
			}
			hint := ""
			if o, _ := clientPaths(c.dir, other, n); certfmt.ReadFirstCert(o) != nil {
				hint = fmt.Sprintf("; %s is a %s certificate: ", o, transport.RoleName(other))
				if other == transport.RoleServerApp {
					hint += "add --serverapp"
				} else {
					hint += "drop --serverapp"
				}
			}
			return fmt.Errorf("%s: no %s certificate of that name (%s is missing or holds no certificate)%s; a certificate whose file is gone is revoked with --serial HEX",
				n, transport.RoleName(role), cert, hint)
		}
		if !issuedBy(leaf, ca) {
			return fmt.Errorf("%s was not issued by the CA in %s: it cannot be revoked here (the SuperLink does not accept it anyway)", cert, pathsIn(c.dir).caCert)
		}
		targets = append(targets, target{fmt.Sprintf("%s (serial %s)", transport.Identity{Role: role, Name: n}, certfmt.Serial(leaf.SerialNumber)), leaf.SerialNumber})
	}

	crlFile := filepath.Join(c.dir, crlName)
	prev, _, err := loadCRL(stdout, ca, crlFile)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		// No NAME: only a missing CRL, or another CA's (the CA was made
		// again), is written anew, empty; the CA's own needs a NAME.
		if prev != nil {
			return missingName
		}
		return writeEmptyCRL(stdout, ca, c.dir, crlFile, now)
	}
	var serials []*big.Int
	for _, t := range targets {
		if prev != nil && certfmt.Listed(prev.RevokedCertificateEntries, t.serial) {
			fmt.Fprintf(stdout, "%s is revoked already.\n", t.what)
			continue
		}
		serials = append(serials, t.serial)
	}
	if len(serials) == 0 {
		fmt.Fprintf(stdout, "%s unchanged.\n", crlFile)
		return nil
	}
	crl, err := ca.SignCRL(prev, serials, now)
	if err != nil {
		return err
	}
	set := &fileSet{dir: c.dir}
	set.add(crlName, crl.PEM, certMode, fmt.Sprintf("CRL number %s, %d revoked", crl.List.Number, len(crl.List.RevokedCertificateEntries)))
	if err := set.write(stdout); err != nil {
		return err
	}
	for _, t := range targets {
		if certfmt.Listed(crl.List.RevokedCertificateEntries, t.serial) {
			fmt.Fprintf(stdout, "revoked %s\n", t.what)
		}
	}
	fmt.Fprintf(stdout, "A SuperLink started with --client-crl %s refuses them within its poll interval, or at once on SIGHUP, also on connections already open; no restart.\n", crlFile)
	return nil
}

// writeEmptyCRL writes an empty CRL of ca as dir's crlFile.
func writeEmptyCRL(stdout io.Writer, ca *selfsigned.CA, dir, crlFile string, now time.Time) error {
	crl, err := ca.SignCRL(nil, nil, now)
	if err != nil {
		return err
	}
	set := &fileSet{dir: dir}
	set.add(crlName, crl.PEM, certMode, fmt.Sprintf("CRL number %s of the CA, none revoked", crl.List.Number))
	if err := set.write(stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "A SuperLink started with --client-crl %s reads it within its poll interval, or at once on SIGHUP (restart one that refused to start).\n", crlFile)
	return nil
}

// issuedBy reports whether the CA signed c.
func issuedBy(c *x509.Certificate, ca *selfsigned.CA) bool {
	return c.CheckSignatureFrom(ca.Cert) == nil
}

// parseSerial reads a serial in hex, with or without "serial=", colons or
// a 0x prefix.
func parseSerial(s string) (*big.Int, bool) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "serial=")
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	s = strings.ReplaceAll(s, ":", "")
	n, ok := new(big.Int).SetString(s, 16)
	if !ok || n.Sign() <= 0 {
		return nil, false
	}
	return n, true
}

// fileSet is files of one folder to be written as one set
// (certfile.WriteSet: all of them or none, whenever the process ends),
// each with the line printed once they are written.
type fileSet struct {
	dir   string
	files []certfile.SetFile
	lines []string
}

// add adds the file name of the folder; what says what it is.
func (s *fileSet) add(name string, data []byte, mode fs.FileMode, what string) {
	s.files = append(s.files, certfile.SetFile{Name: name, Data: data, Mode: mode})
	s.lines = append(s.lines, fmt.Sprintf("wrote %-28s %04o  %s\n", filepath.Join(s.dir, name), mode, what))
}

// write writes the set (the folder is made 0700 if missing) and prints
// its lines. An empty set writes nothing.
func (s *fileSet) write(stdout io.Writer) error {
	if len(s.files) == 0 {
		return nil
	}
	if err := certfile.WriteSet(s.dir, s.files); err != nil {
		return err
	}
	for _, l := range s.lines {
		fmt.Fprint(stdout, l)
	}
	return nil
}

// recoverSets completes or undoes a set write that a killed run left in
// each folder, saying so, before anything is decided.
func recoverSets(stdout io.Writer, dirs ...string) error {
	for _, d := range dirs {
		rec, err := certfile.RecoverSet(d)
		if err != nil {
			return fmt.Errorf("%w; nothing was written", err)
		}
		if !rec.Empty() {
			fmt.Fprintf(stdout, "%s: an earlier run was stopped while writing: %s.\n", d, rec)
		}
	}
	return nil
}
