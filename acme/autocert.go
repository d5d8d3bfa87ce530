package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	xacme "golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// autocertBackend manages certificates with autocert.Manager, whose
// GetCertificate answers TLS-ALPN-01 and whose HTTPHandler answers HTTP-01.
// autocert logs nothing, so a RoundTripper logs the ACME steps and keeps
// the CA's last problem document for error messages.
type autocertBackend struct {
	m     *autocert.Manager
	cache autocert.DirCache
	rt    *acmeTrace
}

func newAutocert(o Options, roots *x509.CertPool) (backend, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if roots != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	rt := &acmeTrace{next: tr, log: o.Logger, ca: o.CA}
	cache := autocert.DirCache(filepath.Join(o.Storage, "autocert"))
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS, // never prompt; running with --acme-* is the agreement
		Cache:      cache,
		HostPolicy: autocert.HostWhitelist(o.Domains...),
		Email:      o.Email,
		Client: &xacme.Client{
			DirectoryURL: o.CA,
			HTTPClient:   &http.Client{Transport: rt, Timeout: 30 * time.Second},
			RetryBackoff: retryBackoff,
			UserAgent:    "sepal",
		},
	}
	return &autocertBackend{m: m, cache: cache, rt: rt}, nil
}

// retryBackoff retries badNonce and 5xx answers quickly (250 ms doubling
// to 10 s, at most 10 times) and honours a short Retry-After; a Retry-After
// beyond a minute (a rate limit) ends the attempt instead of blocking.
func retryBackoff(n int, _ *http.Request, res *http.Response) time.Duration {
	if n > 10 {
		return -1
	}
	if res != nil {
		if v := res.Header.Get("Retry-After"); v != "" {
			if secs, err := strconv.Atoi(v); err == nil {
				if secs > 60 {
					return -1
				}
				return time.Duration(secs) * time.Second
			}
		}
	}
	return min(250*time.Millisecond<<(n-1), 10*time.Second)
}

// ecdsaHello asks autocert for the ECDSA certificate of name. Sepal's
// clients all support ECDSA; asking for it on every handshake keeps
// autocert from starting an RSA issuance in a handshake.
func ecdsaHello(name string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{
		ServerName:   name,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
}

func (b *autocertBackend) certificate(_ *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	return b.m.GetCertificate(ecdsaHello(name))
}

func (b *autocertBackend) challengeCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return b.m.GetCertificate(hello)
}

func (b *autocertBackend) httpHandler() http.Handler {
	return b.m.HTTPHandler(http.NotFoundHandler())
}

// obtain asks the Manager for the certificate as a handshake would: it
// loads a valid one from the cache folder, or obtains one, and starts the
// Manager's renewal timer. autocert bounds this by its own 5 minutes; we
// stop waiting when ctx ends.
func (b *autocertBackend) obtain(ctx context.Context, domain string) (*x509.Certificate, bool, error) {
	_, cacheErr := b.cache.Get(ctx, domain)
	type result struct {
		cert *tls.Certificate
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := b.m.GetCertificate(ecdsaHello(domain))
		done <- result{c, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		r.err = context.Cause(ctx)
	}
	if r.err != nil {
		if p := b.rt.lastProblem(); p != "" {
			return nil, false, fmt.Errorf("%w; the CA said: %s", r.err, p)
		}
		return nil, false, r.err
	}
	leaf := r.cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(r.cert.Certificate[0]); err != nil {
			return nil, false, err
		}
	}
	// Loaded if the cache held it and autocert did not have to replace it.
	return leaf, cacheErr == nil && !b.rt.issuedSince(), nil
}

// stop ends nothing: autocert's renewal timers have no stop method; they
// end with the process.
func (b *autocertBackend) stop() {}

// acmeTrace logs the ACME steps of an x/crypto/acme client and keeps the
// last problem document the CA sent, including the error of a failed
// challenge, which autocert does not return.
type acmeTrace struct {
	next http.RoundTripper
	log  *slog.Logger
	ca   string

	mu       sync.Mutex
	dir      struct{ NewAccount, NewOrder string }
	problem  string
	issued   bool
	statuses map[string]string // URL -> last status logged
}

func (t *acmeTrace) lastProblem() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.problem
}

// issuedSince reports (and resets) whether a certificate was downloaded.
func (t *acmeTrace) issuedSince() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := t.issued
	t.issued = false
	return v
}

type acmeObject struct {
	Status     string `json:"status"`
	Identifier *struct {
		Value string `json:"value"`
	} `json:"identifier"`
	Type       string      `json:"type"`
	Token      string      `json:"token"`
	Detail     string      `json:"detail"`
	Finalize   string      `json:"finalize"`
	Error      *problemDoc `json:"error"`
	Challenges []struct {
		Type  string      `json:"type"`
		Error *problemDoc `json:"error"`
	} `json:"challenges"`
	NewAccount string `json:"newAccount"`
	NewOrder   string `json:"newOrder"`
}

type problemDoc struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

func (p *problemDoc) String() string { return strings.TrimSpace(p.Type + " - " + p.Detail) }

func (t *acmeTrace) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.next.RoundTrip(req)
	if err != nil {
		t.mu.Lock()
		t.problem = err.Error()
		t.mu.Unlock()
		t.log.Warn("the ACME CA cannot be reached", "url", req.URL.String(), "error", err)
		return res, err
	}
	ct := res.Header.Get("Content-Type")
	if strings.HasPrefix(ct, "application/pem-certificate-chain") {
		t.mu.Lock()
		t.issued = true
		t.mu.Unlock()
		t.log.Info("certificate downloaded", "url", req.URL.String())
		return res, nil
	}
	if !strings.Contains(ct, "json") || res.ContentLength > 1<<20 {
		return res, nil
	}
	body, rerr := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	res.Body.Close()
	res.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return res, nil
	}
	var o acmeObject
	if json.Unmarshal(body, &o) != nil {
		return res, nil
	}
	t.observe(req, res, &o)
	return res, nil
}

func (t *acmeTrace) observe(req *http.Request, res *http.Response, o *acmeObject) {
	u := req.URL.String()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.statuses == nil {
		t.statuses = map[string]string{}
	}
	changed := func() bool {
		if t.statuses[u] == o.Status {
			return false
		}
		t.statuses[u] = o.Status
		return true
	}
	switch {
	case strings.Contains(res.Header.Get("Content-Type"), "problem+json"):
		p := problemDoc{Type: o.Type, Detail: o.Detail}
		if strings.HasSuffix(o.Type, ":badNonce") {
			t.log.Debug("the ACME CA rejected a nonce; retrying", "url", u)
			return
		}
		t.problem = p.String()
		t.log.Warn("the ACME CA answered with a problem", "url", u, "status", res.StatusCode, "problem", t.problem)
	case o.NewAccount != "":
		t.dir.NewAccount, t.dir.NewOrder = o.NewAccount, o.NewOrder
	case u == t.dir.NewAccount:
		t.log.Info("ACME account ready", "status", o.Status, "account", res.Header.Get("Location"))
	case u == t.dir.NewOrder:
		t.log.Info("ACME order created", "status", o.Status, "order", res.Header.Get("Location"))
	case len(o.Challenges) > 0:
		for _, c := range o.Challenges {
			if c.Error != nil {
				t.problem = fmt.Sprintf("%s challenge: %s", c.Type, c.Error)
			}
		}
		if changed() && o.Identifier != nil {
			lvl := slog.LevelDebug
			switch o.Status {
			case "valid":
				lvl = slog.LevelInfo
			case "invalid":
				lvl = slog.LevelWarn
			}
			t.log.Log(context.Background(), lvl, "ACME authorization", "domain", o.Identifier.Value, "status", o.Status, "problem", t.problem)
		}
	case o.Token != "" && o.Type != "":
		if changed() {
			t.log.Info("ACME challenge", "type", o.Type, "status", o.Status)
		}
		if o.Error != nil {
			t.problem = fmt.Sprintf("%s challenge: %s", o.Type, o.Error)
		}
	case o.Finalize != "":
		if changed() {
			t.log.Info("ACME order", "status", o.Status, "order", u)
		}
		if o.Error != nil {
			t.problem = o.Error.String()
		}
	}
}
