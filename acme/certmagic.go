package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	acmeproto "github.com/mholt/acmez/v3/acme"
)

// certmagicBackend manages certificates with certmagic: its own in-memory
// cache (not the package-wide default), file storage, one ACME issuer.
type certmagicBackend struct {
	cache *certmagic.Cache
	cfg   *certmagic.Config
	iss   *certmagic.ACMEIssuer
	opts  *Options // for OnEvent

	sync syncLoop // serves certificates renewed by other processes sharing the storage

	mu      sync.Mutex
	lastErr map[string]error   // domain -> last failed attempt, from cert_failed events
	issued  map[string]bool    // domain -> this process obtained it (cert_obtained events)
	giveUp  map[string]startup // domain -> its start-up obtain, ended on a fatal failure
}

// startup is the obtain of one domain at start-up.
type startup struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

var _ certmagic.Issuer = (*certmagic.ACMEIssuer)(nil)

func newCertmagic(o Options, roots *x509.CertPool) (backend, error) {
	b := &certmagicBackend{lastErr: map[string]error{}, issued: map[string]bool{}, giveUp: map[string]startup{}, opts: &o}
	zl := newZapLoggerHook(o.Logger, b.onRetry)
	var storage certmagic.Storage = &certmagic.FileStorage{Path: o.Storage}
	if o.CertmagicStorage != nil {
		storage = o.CertmagicStorage
	}
	var cfg *certmagic.Config
	b.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		RenewCheckInterval: o.RenewCheckInterval,
		Logger:             zl,
	})
	cfg = certmagic.New(b.cache, certmagic.Config{
		RenewalWindowRatio: o.RenewalWindowRatio, // 0 takes certmagic's default (1/3)
		DefaultServerName:  o.Domains[0],
		Storage:            storage,
		Logger:             zl,
		OnEvent:            b.onEvent,
		// tls_get_certificate would build event data on every handshake.
		ShouldEmitFunc: func(event string) bool { return event != "tls_get_certificate" },
	})
	host, port, err := splitHostPort(o.TLSALPNAddress)
	if o.Challenge == ChallengeHTTP01 {
		host, port, err = splitHostPort(o.HTTPAddress)
	}
	if err != nil {
		return nil, fmt.Errorf("challenge address: %w", err)
	}
	tmpl := certmagic.ACMEIssuer{
		CA:     o.CA,
		Email:  o.Email,
		Agreed: true, // never prompt; running with --acme-* is the agreement
		// The certificate is obtained non-interactively (see obtain), so
		// an empty email never prompts on stdin either.
		DisableHTTPChallenge:    o.Challenge != ChallengeHTTP01,
		DisableTLSALPNChallenge: o.Challenge != ChallengeTLSALPN01,
		// With a folder, one process answers its own challenges from
		// memory: no challenge tokens in storage, no storage reads in
		// handshakes. With a shared storage, the tokens go there, so that
		// whichever replica the CA reaches answers (a storage read in
		// acme-tls/1 handshakes and HTTP-01 requests only).
		DisableDistributedSolvers: o.CertmagicStorage == nil,
		// certmagic listens here only if nothing does; our responder
		// (HTTP-01, or TLS-ALPN-01 at start-up) or the server's listener
		// already does, so certmagic uses it.
		ListenHost:   host,
		TrustedRoots: roots,
		Logger:       zl,
	}
	if o.Challenge == ChallengeHTTP01 {
		tmpl.AltHTTPPort = port
	} else {
		tmpl.AltTLSALPNPort = port
	}
	if o.CA == LetsEncryptProduction {
		// certmagic retries a failed order against staging first.
		tmpl.TestCA = LetsEncryptStaging
	}
	b.iss = certmagic.NewACMEIssuer(cfg, tmpl)
	cfg.Issuers = []certmagic.Issuer{b.iss}
	b.cfg = cfg
	b.startSync(o)
	return b, nil
}

// onEvent keeps the last failure per domain, so that New can report the
// CA's own error text when the start-up timeout ends the retries, and
// notes which domains this process obtained (with a shared storage,
// another replica may have, and this one loaded the result), and tells
// Options.OnEvent of orders.
func (b *certmagicBackend) onEvent(_ context.Context, event string, data map[string]any) error {
	id, _ := data["identifier"].(string)
	kind := EventObtain
	if renewal, _ := data["renewal"].(bool); renewal {
		kind = EventRenew
	}
	if event == "cert_obtained" {
		if id != "" {
			b.mu.Lock()
			b.issued[normalize(id)] = true
			b.mu.Unlock()
			b.opts.emit(kind, normalize(id), nil)
		}
		return nil
	}
	if event != "cert_failed" {
		return nil
	}
	if err, ok := data["error"].(error); ok && id != "" {
		b.opts.emit(kind, normalize(id), err)
		b.mu.Lock()
		b.lastErr[normalize(id)] = err
		st, ok := b.giveUp[normalize(id)]
		b.mu.Unlock()
		if ok && b.fatal(err) {
			st.cancel(err)
		}
	}
	return nil
}

// permanent reports whether the CA refused for a reason that retrying
// cannot mend until the operator acts: the validation failed (DNS, the
// connection, the answer), the name is refused, or a rate limit is hit.
// At start-up such a failure ends the wait at once instead of retrying
// until the start-up timeout (and spending the CA's failed-validation
// limit); background renewals keep retrying with backoff.
func permanent(err error) bool {
	var p acmeproto.Problem
	if !errors.As(err, &p) {
		return false
	}
	switch p.Type {
	case acmeproto.ProblemTypeUnauthorized, acmeproto.ProblemTypeConnection, acmeproto.ProblemTypeDNS,
		acmeproto.ProblemTypeIncorrectResponse, acmeproto.ProblemTypeTLS, acmeproto.ProblemTypeCAA,
		acmeproto.ProblemTypeRejectedIdentifier, acmeproto.ProblemTypeUnsupportedIdentifier,
		acmeproto.ProblemTypeRateLimited, acmeproto.ProblemTypeCompound,
		acmeproto.ProblemTypeExternalAccountRequired, acmeproto.ProblemTypeInvalidContact,
		acmeproto.ProblemTypeUnsupportedContact:
		return true
	}
	return false
}

// reRetried reads the name from the error of certmagic's attempt that it
// retries: "[NAME] Obtain: ..." or "[NAME] Renew: ...".
var reRetried = regexp.MustCompile(`^\[([^\]]+)\] (?:Obtain|Renew): `)

// errNoRetryInTime ends a start-up whose next attempt would come after
// its deadline.
type errNoRetryInTime struct{ in, left time.Duration }

func (e errNoRetryInTime) Error() string {
	return fmt.Sprintf("the next attempt would come in %v, after the start-up timeout (%v left)", e.in, e.left.Round(time.Millisecond))
}

// onRetry hears certmagic's "will retry" of a failed attempt. At start-up,
// when the attempt ended the start-up (a fatal failure), or the next one
// would come after the start-up deadline (which it then ends at once
// rather than wait for nothing), the line is dropped: the start-up's own
// error says what failed, and no retry follows. Renewals keep the line.
func (b *certmagicBackend) onRetry(err error, in time.Duration) bool {
	m := reRetried.FindStringSubmatch(err.Error())
	if m == nil {
		return false
	}
	b.mu.Lock()
	st, ok := b.giveUp[normalize(m[1])]
	b.mu.Unlock()
	if !ok {
		return false
	}
	if st.ctx.Err() != nil {
		return true
	}
	if dl, ok := st.ctx.Deadline(); ok && time.Until(dl) < in {
		st.cancel(errNoRetryInTime{in: in, left: time.Until(dl)})
		return true
	}
	return false
}

// fatal reports whether a failed attempt ends start-up at once: the CA
// refused for good (permanent), or its own HTTPS certificate is not
// trusted, which no retry mends either.
func (b *certmagicBackend) fatal(err error) bool {
	return permanent(err) || caUntrusted(err, b.opts.CA)
}

func (b *certmagicBackend) certificate(hello *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	h := *hello
	h.ServerName = name
	return b.cfg.GetCertificate(&h)
}

func (b *certmagicBackend) challengeCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return b.cfg.GetCertificate(hello)
}

func (b *certmagicBackend) httpHandler() http.Handler {
	return b.iss.HTTPChallengeHandler(http.NotFoundHandler())
}

// obtain follows certmagic's ManageSync for one name, except that a
// certificate in storage that is still valid is served as it is (renewal,
// if due, happens in the background), so start-up needs no CA; and that
// obtaining is non-interactive (never a prompt) with certmagic's retries,
// bounded by ctx.
func (b *certmagicBackend) obtain(ctx context.Context, domain string) (*x509.Certificate, bool, error) {
	ctx, giveUp := context.WithCancelCause(ctx)
	defer giveUp(nil)
	b.mu.Lock()
	b.giveUp[domain] = startup{ctx, giveUp}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.giveUp, domain)
		b.mu.Unlock()
	}()
	cert, err := b.cfg.CacheManagedCertificate(ctx, domain)
	switch {
	case err == nil && cert.Leaf != nil && time.Now().Before(cert.Leaf.NotAfter):
		return cert.Leaf, true, nil
	case err == nil:
		// expired in storage: renew (certmagic's obtain would be a no-op).
		err = b.cfg.RenewCertAsync(ctx, domain, true)
	case errors.Is(err, fs.ErrNotExist):
		err = b.cfg.ObtainCertAsync(ctx, domain)
	default:
		return nil, false, fmt.Errorf("loading the certificate from storage: %w", err)
	}
	if err != nil || ctx.Err() != nil {
		b.mu.Lock()
		last := b.lastErr[domain]
		b.mu.Unlock()
		if last != nil {
			if b.fatal(context.Cause(ctx)) {
				return nil, false, last // the CA said no, or is not trusted: its own words
			}
			if ctx.Err() != nil {
				return nil, false, fmt.Errorf("gave up (%w) after the last attempt failed: %w", context.Cause(ctx), last)
			}
			return nil, false, last
		}
		if err == nil {
			err = context.Cause(ctx)
		}
		return nil, false, err
	}
	cert, err = b.cfg.CacheManagedCertificate(ctx, domain)
	if err != nil {
		return nil, false, fmt.Errorf("loading the new certificate: %w", err)
	}
	if cert.Leaf == nil {
		return nil, false, errors.New("certmagic returned a certificate without a leaf")
	}
	// Another process sharing the storage may have obtained it while
	// this one waited for the lock.
	b.mu.Lock()
	issued := b.issued[domain]
	b.mu.Unlock()
	return cert.Leaf, !issued, nil
}

func (b *certmagicBackend) stop() {
	b.stopSync()
	b.cache.Stop()
}
