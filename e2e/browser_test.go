package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// statusPage is what Chromium shows of the status page.
type statusPage struct {
	text        string // the whole body's text
	ready       string // #ready
	nodesOnline string // #nodes-online ("" without state)
	identities  []string
	rounds      []string // the round column of the runs table
	refresh     string   // the meta refresh content

	// Flower 1.29: #nodes129-online, and the columns of the nodes and
	// runs tables.
	nodes129Online string
	nodeIDs129     []string
	keys129        []string
	heartbeats129  []string
	statuses129    []string
}

// screenshotEnv, when set, makes statusInBrowser write a screenshot to
// docs/NAME when given a name (TestMonitoringFiles's is the picture
// docs/operating.md shows, docs/status-page.png):
//
//	SEPAL_SCREENSHOT=1 go test ./e2e -run TestMonitoringFiles
const screenshotEnv = "SEPAL_SCREENSHOT"

// statusInBrowser opens url in headless Chromium from Debian with
// JavaScript disabled (the page must not need it), reads what it shows and
// hands it to check; with SEPAL_SCREENSHOT set it saves a screenshot for
// the docs under docs/shot (none when shot is "").
func statusInBrowser(t *testing.T, url, shot string, check func(statusPage)) {
	t.Helper()
	exe := chromium(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 900),
	}
	// The allocator's context bounds the browser's whole life.
	bctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	actx, cancel := chromedp.NewExecAllocator(bctx, opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()

	noScripts := chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		return err
	})
	if err := chromedp.Do(ctx, noScripts, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("#ready"))); err != nil {
		t.Fatalf("Chromium could not show %s: %v", url, err)
	}
	var p statusPage
	var err error
	text := func(sel string) string {
		t.Helper()
		if err != nil {
			return ""
		}
		var s string
		s, err = chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		return s
	}
	list := func(sel string) []string {
		t.Helper()
		if err != nil {
			return nil
		}
		var out []string
		out, err = chromedp.Run(ctx, chromedp.EvaluateAsDevTools[[]string](
			fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).map(e => e.textContent)`, sel)))
		return out
	}
	p.text = text("body")
	p.ready = text("#ready")
	if has := list("#nodes-online"); len(has) == 1 {
		p.nodesOnline = has[0]
	}
	p.identities = list("td.identity")
	p.rounds = list("td.round")
	if has := list("#nodes129-online"); len(has) == 1 {
		p.nodes129Online = has[0]
	}
	p.nodeIDs129 = list("#nodes129 tbody td:first-child")
	p.keys129 = list("td.key")
	p.heartbeats129 = list("td.heartbeat")
	p.statuses129 = list("td.status129")
	if err == nil {
		var a chromedp.AttributeResult
		a, err = chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(`meta[http-equiv="refresh"]`), "content"))
		p.refresh = a.Value
	}
	if err != nil {
		t.Fatalf("reading the status page in Chromium: %v", err)
	}
	if p.refresh == "" {
		t.Errorf("the page has no meta refresh")
	}
	if os.Getenv(screenshotEnv) != "" && shot != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(moduleRoot(), "docs", shot)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
	}
	p.text = strings.Join(strings.Fields(p.text), " ")
	check(p)
}
