// Package acme supplies serving certificates obtained from an ACME CA such
// as Let's Encrypt, renewed in the background. It has two clients behind one
// type: github.com/caddyserver/certmagic (the default) and
// golang.org/x/crypto/acme/autocert (lighter, fewer abilities). A *Source
// satisfies Sepal's transport.CertSource, transport.Runner and
// transport.ALPNSource without importing transport, and a server cannot tell
// which client is behind it.
//
// Start-up (New, or Prepare then Obtain) obtains, or loads from storage, a
// certificate for every domain before the server reports that it serves;
// until then the Source answers only ACME validations. A valid certificate in storage is used even when the CA
// cannot be reached. Renewal runs in the background; a renewed certificate
// reaches new handshakes at once, a failed renewal keeps the current one.
//
// This is the only package of Sepal that imports certmagic (and zap through
// it); certmagic's logs are bridged into the caller's slog.Logger.
package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// Directory URLs of Let's Encrypt.
const (
	LetsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging    = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// Challenge types and client names accepted in Options.
const (
	ChallengeTLSALPN01 = "tls-alpn-01"
	ChallengeHTTP01    = "http-01"

	ClientCertmagic = "certmagic"
	ClientAutocert  = "autocert"

	// ALPNProto is the protocol a listener must offer for TLS-ALPN-01.
	ALPNProto = "acme-tls/1"
)

// DefaultStartupTimeout bounds how long New may take to obtain certificates.
const DefaultStartupTimeout = 3 * time.Minute

// DefaultStorageCheckInterval is the default of Options.StorageCheckInterval.
const DefaultStorageCheckInterval = time.Minute

// Options configures a Source. The zero value of every field but Domains
// has a documented default.
type Options struct {
	// Domains are the DNS names to obtain a certificate for, one certificate
	// per name. Required. Clients that send no SNI, or an unknown one, get
	// the certificate of Domains[0].
	Domains []string

	// Email is the contact address of the ACME account. "" registers an
	// account without contact; it never prompts on standard input.
	Email string

	// CA is the ACME directory URL. Default LetsEncryptProduction; "staging"
	// is shorthand for LetsEncryptStaging.
	CA string

	// CARootFile is a PEM file of roots that the CA's own HTTPS chains to
	// (a private CA, or pebble in tests). Default: the system pool.
	CARootFile string

	// Storage is the folder for the account and certificates, created 0700.
	// Default DefaultStorage(). certmagic keeps its layout (acme/,
	// certificates/) in it; autocert keeps its files in Storage/autocert.
	Storage string

	// CertmagicStorage, when set, replaces the folder for the certmagic
	// client: certmagic's Storage interface, with its locks, so that
	// several SuperLinks behind a load balancer can share one account and
	// one certificate through a distributed store (a PostgresStorage, or
	// Redis, Consul, etcd). Challenge tokens are kept in it too, so that
	// any replica answers the CA's validation of an order another placed.
	// The autocert client does not use it. Default: certmagic.FileStorage
	// on Storage (and each process answers only its own challenges).
	CertmagicStorage certmagic.Storage

	// StorageCheckInterval is how often the certmagic client looks in
	// storage for a certificate newer than the one it serves (renewed by
	// another process that shares the storage) and serves it: a renewal by
	// one replica reaches the others within this interval. A torn write
	// (certificate and key that do not match yet) is not served; the next
	// check tries again. Default DefaultStorageCheckInterval.
	StorageCheckInterval time.Duration

	// Challenge is ChallengeTLSALPN01 (default) or ChallengeHTTP01.
	Challenge string

	// TLSALPNAddress is the address of the TLS listener that answers
	// TLS-ALPN-01: the server's own listener, whose tls.Config offers
	// NextProtos and calls GetCertificate. During New, before that listener
	// exists, the Source listens there itself for the first certificates.
	// The CA connects to port 443 of each domain, which must reach it.
	// Default ":443".
	TLSALPNAddress string

	// HTTPAddress is where the HTTP-01 responder listens, from New until
	// Run ends (only with ChallengeHTTP01). The CA connects to port 80 of
	// each domain, which must reach it. Default ":80".
	HTTPAddress string

	// Client is ClientCertmagic (default) or ClientAutocert.
	Client string

	// StartupTimeout bounds New. Default DefaultStartupTimeout.
	StartupTimeout time.Duration

	// RenewCheckInterval is how often certmagic checks whether a
	// certificate is due for renewal. Default certmagic's (10 min).
	// autocert sets a timer per certificate and ignores it.
	RenewCheckInterval time.Duration

	// RenewalWindowRatio is the part of a certificate's lifetime, at its
	// end, in which certmagic renews it (unless the CA's ARI says
	// otherwise). Default 1/3, which is also autocert's fixed choice.
	RenewalWindowRatio float64

	// Logger receives the steps (account, order, challenge, issued, expiry)
	// and certmagic's own logs. Default: discard.
	Logger *slog.Logger

	// OnEvent, when set, is told of every order that succeeded or failed
	// (each attempt) and of certificates loaded from storage (at start, or
	// renewed by another process sharing the storage), for metrics. It is
	// called from the goroutine doing the work, so it must be quick and
	// safe for concurrent use. With autocert, which reports
	// nothing, a renewal is seen when a new certificate is first served,
	// and failed renewals are not seen. Default: nothing is called.
	OnEvent func(Event)
}

// DefaultStorage returns the per-user folder for ACME data:
// $XDG_DATA_HOME/sepal/acme, else ~/.local/share/sepal/acme on Linux and
// the BSDs (macOS: ~/Library/Application Support/sepal/acme, Windows:
// %AppData%\sepal\acme). Without $HOME (a service), the home folder is the
// user's in the user database; a user without one (such as nobody) gets
// $STATE_DIRECTORY/acme under systemd's StateDirectory=, else
// /var/lib/sepal/acme. Never the current folder.
func DefaultStorage() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "sepal", "acme")
	}
	if home := userHome(); home != "" && runtime.GOOS != "windows" {
		if runtime.GOOS == "darwin" {
			return filepath.Join(home, "Library", "Application Support", "sepal", "acme")
		}
		return filepath.Join(home, ".local", "share", "sepal", "acme")
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "sepal", "acme")
	}
	return systemStorage()
}

// ResolveCA expands "" and "staging" to Let's Encrypt's directory URLs and
// checks that anything else is an https URL.
func ResolveCA(ca string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(ca)) {
	case "", "production", "letsencrypt":
		return LetsEncryptProduction, nil
	case "staging":
		return LetsEncryptStaging, nil
	}
	if !strings.HasPrefix(ca, "https://") || len(ca) <= len("https://") {
		return "", fmt.Errorf("ACME CA %q is not an https:// directory URL (or \"staging\")", ca)
	}
	return ca, nil
}

// normalize lower-cases a DNS name and strips a trailing dot.
func normalize(name string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
}

// validDomain reports why name cannot be an ACME DNS identifier, or "".
func validDomain(name string) string {
	if why := domainChars(name); why != "" {
		return why
	}
	switch {
	case name == "":
		return "it is empty"
	case net.ParseIP(name) != nil:
		return "it is an IP address; ACME here issues for DNS names"
	case strings.Contains(name, "*"):
		return "wildcards need the DNS-01 challenge, which Sepal does not do"
	case !strings.Contains(name, "."):
		return "it has a single label; use the full name, such as superlink.example.org"
	case len(name) > 253:
		return "it is longer than 253 characters"
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return fmt.Sprintf("label %q is not a valid DNS label", label)
		}
		for _, r := range label {
			if !(r == '-' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
				return fmt.Sprintf("label %q has the character %q", label, r)
			}
		}
	}
	return ""
}

// ValidateDomain returns an error saying why name cannot be a domain of a
// Source, or nil.
func ValidateDomain(name string) error {
	if why := validDomain(normalize(name)); why != "" {
		return fmt.Errorf("domain %q: %s", name, why)
	}
	return nil
}

// withDefaults validates o and fills in its defaults.
func (o Options) withDefaults() (Options, error) {
	if len(o.Domains) == 0 {
		return o, errors.New("no ACME domain given")
	}
	seen := map[string]bool{}
	var domains []string
	for _, d := range o.Domains {
		n := normalize(d)
		if why := validDomain(n); why != "" {
			return o, fmt.Errorf("domain %q: %s", d, why)
		}
		if !seen[n] {
			seen[n] = true
			domains = append(domains, n)
		}
	}
	o.Domains = domains
	ca, err := ResolveCA(o.CA)
	if err != nil {
		return o, err
	}
	o.CA = ca
	if err := ValidateEmail(o.Email); err != nil {
		return o, err
	}
	if o.Storage == "" {
		o.Storage = DefaultStorage()
	}
	switch o.Challenge {
	case "":
		o.Challenge = ChallengeTLSALPN01
	case ChallengeTLSALPN01, ChallengeHTTP01:
	default:
		return o, fmt.Errorf("ACME challenge %q: use %q or %q", o.Challenge, ChallengeTLSALPN01, ChallengeHTTP01)
	}
	switch o.Client {
	case "":
		o.Client = ClientCertmagic
	case ClientCertmagic, ClientAutocert:
	default:
		return o, fmt.Errorf("ACME client %q: use %q or %q", o.Client, ClientCertmagic, ClientAutocert)
	}
	if o.TLSALPNAddress == "" {
		o.TLSALPNAddress = ":443"
	}
	if o.HTTPAddress == "" {
		o.HTTPAddress = ":80"
	}
	for _, a := range []struct{ name, addr string }{{"TLS-ALPN address", o.TLSALPNAddress}, {"HTTP address", o.HTTPAddress}} {
		if _, _, err := splitHostPort(a.addr); err != nil {
			return o, fmt.Errorf("%s %q: %w", a.name, a.addr, err)
		}
	}
	if o.StartupTimeout < 0 || o.RenewCheckInterval < 0 || o.StorageCheckInterval < 0 {
		return o, errors.New("StartupTimeout, RenewCheckInterval and StorageCheckInterval must not be negative")
	}
	if o.StorageCheckInterval == 0 {
		o.StorageCheckInterval = DefaultStorageCheckInterval
	}
	if o.StartupTimeout == 0 {
		o.StartupTimeout = DefaultStartupTimeout
	}
	if o.RenewalWindowRatio < 0 || o.RenewalWindowRatio >= 1 {
		return o, fmt.Errorf("RenewalWindowRatio %v is not in [0, 1)", o.RenewalWindowRatio)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o, nil
}

// splitHostPort splits "host:port" with a numeric port.
func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", p)
	}
	return host, port, nil
}

// loadRoots reads a PEM file of CA certificates.
func loadRoots(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ACME CA root file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("ACME CA root file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// backend is what certmagic and autocert each supply.
type backend interface {
	// certificate returns the certificate for name, which is one of the
	// domains, from memory. hello is the original ClientHello.
	certificate(hello *tls.ClientHelloInfo, name string) (*tls.Certificate, error)
	// challengeCertificate answers an acme-tls/1 ClientHello.
	challengeCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error)
	// httpHandler answers HTTP-01 requests and 404s the rest.
	httpHandler() http.Handler
	// obtain loads the certificate for domain from storage, or obtains
	// it, and puts it in memory; it reports which.
	obtain(ctx context.Context, domain string) (leaf *x509.Certificate, loaded bool, err error)
	// stop ends background renewal.
	stop()
}

// Source is an ACME certificate source. Its methods are safe for
// concurrent use.
type Source struct {
	opts    Options
	log     *slog.Logger
	b       backend
	domains map[string]bool
	protos  []string

	httpSrv *http.Server
	ready   atomic.Bool // every domain has its certificate (Obtain succeeded)
	serving sync.Map    // domain -> *x509.Certificate last served, for the "serving" log line
	stopped atomic.Bool
}

// New validates o, starts the HTTP-01 responder if that challenge is used,
// and obtains or loads a certificate for every domain before it returns,
// answering TLS-ALPN-01 on o.TLSALPNAddress with a responder of its own
// for as long as that takes. Use it when the server's listener opens only
// after the certificates are in; a server that can open its listener first
// uses Prepare and Obtain instead, so that the listener itself answers.
// It blocks for at most o.StartupTimeout (or until ctx ends). Errors are
// *ObtainError when the CA did not issue, with the CA's own text and what
// to check. Call Run (or Close) to release what New started.
func New(ctx context.Context, o Options) (*Source, error) {
	s, err := Prepare(o)
	if err != nil {
		return nil, err
	}
	if err := s.obtain(ctx, true); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Prepare validates o, creates the storage folder, sets up the ACME client
// and starts the HTTP-01 responder if that challenge is used, without
// obtaining anything: until Obtain succeeds, GetCertificate answers only
// TLS-ALPN-01 validations and refuses other handshakes at once. Call Obtain
// next, then Run (or Close) to release what Prepare started.
func Prepare(o Options) (*Source, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.CertmagicStorage == nil || o.Client == ClientAutocert { // the folder is used
		if err := os.MkdirAll(o.Storage, 0o700); err != nil {
			return nil, fmt.Errorf("creating the ACME storage folder: %w", err)
		}
		if err := CheckStorage(o.Storage); err != nil {
			return nil, err
		}
	}
	var roots *x509.CertPool
	if o.CARootFile != "" {
		if roots, err = loadRoots(o.CARootFile); err != nil {
			return nil, err
		}
	}
	s := &Source{opts: o, log: o.Logger, domains: map[string]bool{}}
	for _, d := range o.Domains {
		s.domains[d] = true
	}
	if o.Challenge == ChallengeTLSALPN01 {
		s.protos = []string{ALPNProto}
	}
	switch o.Client {
	case ClientAutocert:
		s.b, err = newAutocert(o, roots)
	default:
		s.b, err = newCertmagic(o, roots)
	}
	if err != nil {
		return nil, err
	}
	storage := o.Storage
	if o.CertmagicStorage != nil && o.Client == ClientCertmagic {
		storage = fmt.Sprint(o.CertmagicStorage) // a String method says what it is, without secrets
	}
	s.log.Info("ACME client starting", "client", o.Client, "ca", o.CA, "domains", strings.Join(o.Domains, ","),
		"challenge", o.Challenge, "storage", storage, "email_set", o.Email != "")

	if o.Challenge == ChallengeHTTP01 {
		if err := s.startHTTP(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Obtain obtains or loads a certificate for every domain, within
// o.StartupTimeout (or until ctx ends); from then on GetCertificate serves
// them. With TLS-ALPN-01 the server's own listener must already accept on
// o.TLSALPNAddress with a tls.Config that offers NextProtos and calls
// GetCertificate: it answers the validations. Errors are *ObtainError.
// Obtain is meant to be called once, after Prepare.
func (s *Source) Obtain(ctx context.Context) error {
	return s.obtain(ctx, false)
}

// startHTTP starts the HTTP-01 responder on o.HTTPAddress.
func (s *Source) startHTTP() error {
	ln, err := net.Listen("tcp", s.opts.HTTPAddress)
	if err != nil {
		return fmt.Errorf("HTTP-01 responder: %w (the address must be free; the CA connects to port 80 of each domain)", err)
	}
	h := s.b.httpHandler()
	s.httpSrv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
				// The CA asks port 80, so the Host header has no port; behind a
				// port forward (or in tests) it may. autocert's host policy
				// wants the bare name.
				if host, _, err := net.SplitHostPort(r.Host); err == nil {
					r.Host = host
				}
				s.log.Info("answering http-01 challenge", "domain", r.Host, "remote_addr", r.RemoteAddr)
			}
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.log.Info("http-01 responder listening", "address", ln.Addr().String())
	go func() { _ = s.httpSrv.Serve(ln) }()
	return nil
}

// obtain obtains or loads every domain's certificate within the start-up
// timeout, then marks the Source ready. With responder (and TLS-ALPN-01)
// it answers challenges on TLSALPNAddress itself, since the server's
// listener does not exist yet.
func (s *Source) obtain(ctx context.Context, responder bool) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.StartupTimeout)
	defer cancel()
	start := time.Now()
	var stopResponder func()
	defer func() {
		if stopResponder != nil {
			stopResponder()
		}
	}()
	for _, d := range s.opts.Domains {
		// A responder is only needed when a certificate must be obtained,
		// but we learn that inside obtain; starting one costs a listen.
		if responder && s.opts.Challenge == ChallengeTLSALPN01 && stopResponder == nil {
			var err error
			if stopResponder, err = s.startTLSALPNResponder(); err != nil {
				return err
			}
		}
		s.log.Info("obtaining or loading certificate", "domain", d)
		leaf, loaded, err := s.b.obtain(ctx, d)
		if err != nil {
			if s.opts.Client == ClientAutocert {
				s.opts.emit(EventObtain, d, err)
			}
			return &ObtainError{Domain: d, CA: s.opts.CA, Challenge: s.opts.Challenge,
				Address: s.challengeAddress(), Elapsed: time.Since(start).Round(time.Millisecond), Err: err}
		}
		how := "certificate issued"
		if loaded {
			how = "certificate loaded from storage"
			s.opts.emit(EventLoad, d, nil)
		} else if s.opts.Client == ClientAutocert {
			s.opts.emit(EventObtain, d, nil) // certmagic reports its own orders
		}
		s.log.Info(how, "domain", d, "serial", certfmt.Serial(leaf.SerialNumber),
			"issuer", leaf.Issuer.CommonName, "not_before", leaf.NotBefore.UTC().Format(time.RFC3339),
			"expiry", leaf.NotAfter.UTC().Format(time.RFC3339), "elapsed", time.Since(start).Round(time.Millisecond).String())
	}
	s.ready.Store(true)
	return nil
}

func (s *Source) challengeAddress() string {
	if s.opts.Challenge == ChallengeHTTP01 {
		return s.opts.HTTPAddress
	}
	return s.opts.TLSALPNAddress
}

// startTLSALPNResponder listens on TLSALPNAddress and answers only
// acme-tls/1 handshakes until the returned function is called.
func (s *Source) startTLSALPNResponder() (func(), error) {
	ln, err := net.Listen("tcp", s.opts.TLSALPNAddress)
	if err != nil {
		return nil, fmt.Errorf("TLS-ALPN-01 responder: %w (the server's TLS address must be free at start-up; the CA connects to port 443 of each domain)", err)
	}
	cfg := &tls.Config{
		NextProtos: []string{ALPNProto},
		GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if !isChallenge(h) {
				return nil, errors.New("this start-up responder answers only acme-tls/1")
			}
			return s.GetCertificate(h)
		},
		MinVersion: tls.VersionTLS12,
	}
	s.log.Info("tls-alpn-01 responder listening until the certificates are in", "address", ln.Addr().String())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := tls.Server(c, cfg)
				_ = tc.Handshake()
			}()
		}
	}()
	return func() { ln.Close(); wg.Wait() }, nil
}

// isChallenge reports whether hello is a TLS-ALPN-01 validation: SNI set
// and acme-tls/1 as the only protocol (RFC 8737).
func isChallenge(hello *tls.ClientHelloInfo) bool {
	return hello.ServerName != "" && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == ALPNProto
}

// GetCertificate returns the certificate for the hello's server name, or
// the first domain's when the client sent no SNI or a name not managed
// here, and answers TLS-ALPN-01 validations. It reads memory only: with
// certmagic a lookup in its in-memory cache, with autocert in its state
// map; it never starts an ACME operation or reads storage, since every
// domain was loaded in New or Obtain (before that it refuses all but
// validations) and renewals replace certificates in memory.
// Safe for concurrent use; the returned certificate must not be modified.
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if isChallenge(hello) {
		if !s.domains[normalize(hello.ServerName)] {
			return nil, fmt.Errorf("no challenge for %q", hello.ServerName)
		}
		s.log.Info("answering tls-alpn-01 challenge", "domain", normalize(hello.ServerName), "remote_addr", remoteAddr(hello))
		return s.b.challengeCertificate(hello)
	}
	if !s.ready.Load() {
		// Before Obtain, a handshake would make autocert start an order of
		// its own and block on it: refuse at once instead.
		return nil, notReadyError{}
	}
	name := normalize(hello.ServerName)
	if !s.domains[name] {
		name = s.opts.Domains[0]
	}
	cert, err := s.b.certificate(hello, name)
	if err != nil {
		return nil, fmt.Errorf("certificate for %q: %w", name, err)
	}
	if cert.Leaf != nil {
		if prev, ok := s.serving.Load(name); !ok || prev != cert.Leaf {
			if old, loaded := s.serving.Swap(name, cert.Leaf); !loaded || old != cert.Leaf {
				s.log.Info("serving certificate", "domain", name, "serial", certfmt.Serial(cert.Leaf.SerialNumber),
					"expiry", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
				if loaded && s.opts.Client == ClientAutocert {
					s.opts.emit(EventRenew, name, nil) // autocert renewed it in the background
				}
			}
		}
	}
	return cert, nil
}

func remoteAddr(h *tls.ClientHelloInfo) string {
	if h.Conn == nil {
		return ""
	}
	return h.Conn.RemoteAddr().String()
}

// NextProtos returns ["acme-tls/1"] when TLS-ALPN-01 is the challenge, so
// the server's listener answers validations of renewals; nil for HTTP-01.
func (s *Source) NextProtos() []string { return slices.Clone(s.protos) }

// Domains returns the managed domains, normalized, the first being the
// one served to clients without SNI.
func (s *Source) Domains() []string { return slices.Clone(s.opts.Domains) }

// Run keeps renewal and the HTTP-01 responder going until ctx ends, then
// stops them and returns nil. Renewal itself runs from New on; Run only
// marks its end.
func (s *Source) Run(ctx context.Context) error {
	<-ctx.Done()
	s.Close()
	return nil
}

// Close stops renewal and the HTTP-01 responder. Certificates already
// returned stay valid; GetCertificate keeps serving from memory. It is
// safe to call more than once.
func (s *Source) Close() error {
	if s.stopped.Swap(true) {
		return nil
	}
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.httpSrv.Shutdown(ctx)
		cancel()
	}
	s.b.stop()
	return nil
}

// ObtainError is returned by New and Obtain when no certificate could be obtained
// for a domain.
type ObtainError struct {
	Domain    string
	CA        string
	Challenge string
	Address   string // where this process answered the challenge
	Elapsed   time.Duration
	Err       error // the CA's or the client's error
}

func (e *ObtainError) Error() string {
	if caUntrusted(e.Err, e.CA) {
		return fmt.Sprintf("cannot reach the ACME CA at %s: %s; gave up after %v, so no certificate for %s: "+
			"give the roots of its HTTPS certificate as the CA root file (a private CA, or pebble, needs them), or check the CA's directory URL (an HTTPS proxy that intercepts connections shows this too)",
			e.CA, caUnreachable(e.Err, e.CA), e.Elapsed, e.Domain)
	}
	if why := caUnreachable(e.Err, e.CA); why != "" {
		return fmt.Sprintf("cannot reach the ACME CA at %s: %s; tried for %v, so no certificate for %s. "+
			"Check the CA's directory URL, this host's DNS resolver, and that it may open HTTPS connections to the CA (firewall, proxy); "+
			"the domain's DNS and ports play no part until the CA answers", e.CA, why, e.Elapsed, e.Domain)
	}
	port := "443"
	if e.Challenge == ChallengeHTTP01 {
		port = "80"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "no certificate for %s from %s after %v: %v. ", e.Domain, e.CA, e.Elapsed, e.Err)
	fmt.Fprintf(&b, "Check that DNS for %s points to this host, that port %s of it reaches %s (%s answers there), "+
		"and that the CA's rate limits are not exhausted (https://letsencrypt.org/docs/rate-limits/); "+
		"use the staging CA while testing", e.Domain, port, e.Address, e.Challenge)
	return b.String()
}

// Unwrap returns the client's error, and ErrCAUnreachable when the CA
// itself could not be reached (and ErrCAUntrusted when that was because its
// HTTPS certificate is not trusted).
func (e *ObtainError) Unwrap() []error {
	switch {
	case caUntrusted(e.Err, e.CA):
		return []error{e.Err, ErrCAUnreachable, ErrCAUntrusted}
	case caUnreachable(e.Err, e.CA) != "":
		return []error{e.Err, ErrCAUnreachable}
	}
	return []error{e.Err}
}
