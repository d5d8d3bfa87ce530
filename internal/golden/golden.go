// Package golden reads the Flower 1.8.0 messages captured from a real run,
// which live outside this repository in ../shared/flower-1.8/golden (beside
// the checkout). Tests that use them skip, saying why, when the folder is not
// there, except in CI (CI set), where they fail.
package golden

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
)

// Entry is one RPC of index.jsonl.
type Entry struct {
	Seq           int             `json:"seq"`
	T             float64         `json:"t"`
	Method        string          `json:"method"`
	PeerKind      string          `json:"peer_kind"`
	Peer          string          `json:"peer"`
	Phase         string          `json:"phase"`
	Actor         string          `json:"actor"`
	Label         string          `json:"label"`
	Req           string          `json:"req"`
	ReqType       string          `json:"req_type"`
	ReqCanonical  string          `json:"req_canonical"`
	ReqJSON       json.RawMessage `json:"req_json"`
	Resp          string          `json:"resp"`
	RespType      string          `json:"resp_type"`
	RespCanonical string          `json:"resp_canonical"`
	RespJSON      json.RawMessage `json:"resp_json"`
	Status        string          `json:"status"`
	StatusCode    int             `json:"status_code"`
	Details       string          `json:"details"`
}

// Dir returns the golden folder, or skips t with a message saying where it
// was looked for.
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := find()
	if err != nil && os.Getenv("CI") != "" {
		// CI has ../shared beside its checkout: a missing folder there is a
		// broken set-up, not a reason to skip.
		t.Fatalf("golden Flower 1.8.0 messages not found in CI (%v): ../shared/flower-1.8/golden must be beside the checkout", err)
	}
	if err != nil {
		t.Skipf("golden Flower 1.8.0 messages not found (%v): they live in ../shared/flower-1.8/golden beside the checkout; this test needs them", err)
	}
	return dir
}

func find() (string, error) {
	if d := os.Getenv("SEPAL_GOLDEN_DIR"); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			g := filepath.Join(filepath.Dir(d), "shared", "flower-1.8", "golden")
			if _, err := os.Stat(filepath.Join(g, "index.jsonl")); err != nil {
				return "", fmt.Errorf("no %s", filepath.Join(g, "index.jsonl"))
			}
			return g, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", wd)
		}
	}
}

// Index reads index.jsonl, in seq order.
func Index(t testing.TB) []Entry {
	t.Helper()
	dir := Dir(t)
	f, err := os.Open(filepath.Join(dir, "index.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("index.jsonl: %v", err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Bytes reads one golden file.
func Bytes(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Dir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// New returns an empty message of the full protobuf type name, such as
// "flwr.proto.PullTaskInsResponse".
func New(typeName string) (proto.Message, error) {
	name := strings.TrimPrefix(typeName, "flwr.proto.")
	m, ok := messages[name]
	if !ok {
		return nil, fmt.Errorf("no Go type for the golden message type %q", typeName)
	}
	return m(), nil
}

// Decode reads a golden file into a new message of the given type.
func Decode(t testing.TB, name, typeName string) proto.Message {
	t.Helper()
	m, err := New(typeName)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(Bytes(t, name), m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

var messages = map[string]func() proto.Message{
	"CreateNodeRequest":   func() proto.Message { return new(flwrproto.CreateNodeRequest) },
	"CreateNodeResponse":  func() proto.Message { return new(flwrproto.CreateNodeResponse) },
	"DeleteNodeRequest":   func() proto.Message { return new(flwrproto.DeleteNodeRequest) },
	"DeleteNodeResponse":  func() proto.Message { return new(flwrproto.DeleteNodeResponse) },
	"PingRequest":         func() proto.Message { return new(flwrproto.PingRequest) },
	"PingResponse":        func() proto.Message { return new(flwrproto.PingResponse) },
	"PullTaskInsRequest":  func() proto.Message { return new(flwrproto.PullTaskInsRequest) },
	"PullTaskInsResponse": func() proto.Message { return new(flwrproto.PullTaskInsResponse) },
	"PushTaskResRequest":  func() proto.Message { return new(flwrproto.PushTaskResRequest) },
	"PushTaskResResponse": func() proto.Message { return new(flwrproto.PushTaskResResponse) },
	"CreateRunRequest":    func() proto.Message { return new(flwrproto.CreateRunRequest) },
	"CreateRunResponse":   func() proto.Message { return new(flwrproto.CreateRunResponse) },
	"GetNodesRequest":     func() proto.Message { return new(flwrproto.GetNodesRequest) },
	"GetNodesResponse":    func() proto.Message { return new(flwrproto.GetNodesResponse) },
	"PushTaskInsRequest":  func() proto.Message { return new(flwrproto.PushTaskInsRequest) },
	"PushTaskInsResponse": func() proto.Message { return new(flwrproto.PushTaskInsResponse) },
	"PullTaskResRequest":  func() proto.Message { return new(flwrproto.PullTaskResRequest) },
	"PullTaskResResponse": func() proto.Message { return new(flwrproto.PullTaskResResponse) },
}
