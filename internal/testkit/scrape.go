package testkit

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Samples are the metric families of one scrape, by name.
type Samples map[string]*dto.MetricFamily

// Scrape GETs url, a Prometheus /metrics endpoint, asking for the text
// format, and parses the answer with the Prometheus text parser. It fails
// the test on any error.
func Scrape(t testing.TB, url string) Samples {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s\n%s", url, res.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing the scrape of %s: %v\n%s", url, err, body)
	}
	return fams
}

// match reports whether m has every label of want (name, value pairs).
func match(m *dto.Metric, want []string) bool {
	for i := 0; i+1 < len(want); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == want[i] && l.GetValue() == want[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// value is a counter's or gauge's value, or a histogram's sample count.
func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// Value returns the value of the one series of name with the given labels
// (name, value pairs; others may be present), and whether there is exactly
// one. Histograms give their sample count.
func (s Samples) Value(name string, labels ...string) (float64, bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
	var v float64
	n := 0
	for _, m := range f.GetMetric() {
		if match(m, labels) {
			v = value(m)
			n++
		}
	}
	return v, n == 1
}

// Sum adds the values of every series of name with the given labels.
func (s Samples) Sum(name string, labels ...string) float64 {
	var sum float64
	for _, m := range s[name].GetMetric() {
		if match(m, labels) {
			sum += value(m)
		}
	}
	return sum
}

// LabelValues returns the sorted distinct values of label over every
// series of name.
func (s Samples) LabelValues(name, label string) []string {
	seen := map[string]bool{}
	for _, m := range s[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label {
				seen[l.GetValue()] = true
			}
		}
	}
	var out []string
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// Want fails the test unless the series of name with labels exists and
// has value want.
func (s Samples) Want(t testing.TB, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := s.Value(name, labels...)
	if !ok {
		t.Errorf("%s%s: no single series in the scrape", name, fmtLabels(labels))
		return
	}
	if got != want {
		t.Errorf("%s%s = %v, want %v", name, fmtLabels(labels), got, want)
	}
}

func fmtLabels(l []string) string {
	var parts []string
	for i := 0; i+1 < len(l); i += 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", l[i], l[i+1]))
	}
	return "{" + strings.Join(parts, ",") + "}"
}
