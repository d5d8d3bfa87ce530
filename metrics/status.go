package metrics

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/transport"
)

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"stamp": stamp,
	"join":  strings.Join,
	"until": func(now, t time.Time) string {
		if t.Before(now) {
			return "expired " + ago(now.Sub(t)) + " ago"
		}
		return "in " + ago(t.Sub(now))
	},
	"since": func(now, t time.Time) string { return ago(now.Sub(t)) + " ago" },
	"bytes": humanBytes,
	"secs":  func(s float64) string { return ago(time.Duration(s * float64(time.Second))) },
	"dur":   ago,
}).Parse(statusHTML))

// pageData is what the status page shows.
type pageData struct {
	Now      time.Time
	Version  string
	Refresh  int
	Ready    bool
	ReadyWhy string

	Plaintext  bool
	Certs      []certView
	Events     []eventView
	Handshakes []handshakeRow

	HasState   bool
	StateErr   string
	Stats      state.Stats
	Nodes      []state.NodeInfo // online only
	Offline    int
	Identities bool // some node has a certificate identity
	Runs       []state.RunInfo

	HasInflight                   bool
	Inflight, Budget, Connections int64

	// Link is the Flower 1.29.0 generation; nil without a LinkState.
	Link *link129
}

type certView struct {
	Subject, Issuer, Serial string
	SANs                    []string
	NotAfter                time.Time
	ExpiryClass             string
	Source, Name            string
}

type eventView struct {
	What    string // "reload" or "renewal"
	Success time.Time
	CertEvent
}

type handshakeRow struct {
	API             string
	Success, Failed uint64
	Causes          []causeCount
}

type causeCount struct {
	Cause string
	N     uint64
}

// page gathers what the status page shows now.
func (m *Metrics) page(ctx context.Context) pageData {
	now := m.o.Now()
	d := pageData{Now: now, Version: m.o.Version, Refresh: int((m.o.Refresh + time.Second - 1) / time.Second)}
	d.Ready, d.ReadyWhy = m.Ready(ctx)

	for _, s := range m.servedAll() {
		v := certView{Subject: s.leaf.Subject.String(), Issuer: s.leaf.Issuer.String(), Serial: serialText(s.leaf.SerialNumber.Bytes()),
			SANs: certNames(s.leaf), NotAfter: s.leaf.NotAfter, Source: s.source, Name: s.name, ExpiryClass: "ok"}
		switch left := s.leaf.NotAfter.Sub(now); {
		case left < 7*24*time.Hour:
			v.ExpiryClass = "bad"
		case left < 30*24*time.Hour:
			v.ExpiryClass = "warn"
		}
		d.Certs = append(d.Certs, v)
	}
	m.certMu.Lock()
	d.Plaintext = len(m.certs) == 0
	for _, src := range []string{SourceFile, SourceACME} {
		se := m.events[src]
		if se == nil {
			continue
		}
		what := "reload"
		if src == SourceACME {
			what = "renewal or load"
		}
		d.Events = append(d.Events, eventView{What: what, Success: se.lastSuccess, CertEvent: se.last})
	}
	m.certMu.Unlock()

	for a, api := range apis {
		row := m.handshakes[a]
		r := handshakeRow{API: api, Success: row[0].Load()}
		for i, c := range transport.HandshakeCauses {
			if n := row[1+i].Load(); n > 0 {
				r.Failed += n
				r.Causes = append(r.Causes, causeCount{string(c), n})
			}
		}
		if api == APIOther && r.Success == 0 && r.Failed == 0 {
			continue
		}
		d.Handshakes = append(d.Handshakes, r)
	}

	if l, ok := m.limitStats(); ok {
		d.HasInflight = true
		d.Inflight, d.Budget, d.Connections = l.InflightBytes, l.MaxInflightBytes, l.Connections
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if ls := m.getLinkState(); ls != nil {
		d.Link = m.page129(ctx, ls, now)
	}
	src := m.getState()
	if src == nil {
		return d
	}
	d.HasState = true
	st, err := src.Stats(ctx)
	var nodes []state.NodeInfo
	var runs []state.RunInfo
	if err == nil {
		nodes, err = src.Nodes(ctx)
	}
	if err == nil {
		runs, err = src.Runs(ctx, m.o.RecentRuns)
	}
	if err != nil {
		d.StateErr = err.Error()
		return d
	}
	d.Stats, d.Runs = st, runs
	for _, n := range nodes {
		if n.Online {
			d.Nodes = append(d.Nodes, n)
			d.Identities = d.Identities || n.Identity != ""
		} else {
			d.Offline++
		}
	}
	return d
}

func (m *Metrics) statusPage(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	if err := statusTemplate.Execute(&b, m.page(r.Context())); err != nil {
		m.log.Warn("the status page could not be rendered", "error", err)
		http.Error(w, "the status page could not be rendered", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	w.Write(b.Bytes())
}

// stamp is a time as the page shows it, in UTC to the second.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// ago is a duration in its largest sensible unit ("3 min", "89 days").
func ago(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		s = fmt.Sprintf("%d s", int(d/time.Second))
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d/time.Hour))
	default:
		s = fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	if neg {
		return "-" + s
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGT"[i])
}

// serialText is a serial number as openssl x509 -serial prints it:
// upper-case hex.
func serialText(b []byte) string {
	if len(b) == 0 {
		return "00"
	}
	return strings.ToUpper(hex.EncodeToString(b))
}
