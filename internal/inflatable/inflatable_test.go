package inflatable

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	kid := ID([]byte("x"))
	c := Encode("Array", []string{kid, kid}, []byte("body\x00with a NUL"))
	if want := "Array " + kid + "," + kid + " 15\x00body\x00with a NUL"; string(c) != want {
		t.Fatalf("Encode: %q, want %q", c, want)
	}
	typ, kids, err := Parse(c)
	if err != nil || typ != "Array" || !slices.Equal(kids, []string{kid, kid}) {
		t.Fatalf("Parse: %q %v %v", typ, kids, err)
	}
	if b, err := Body(c, "Array"); err != nil || string(b) != "body\x00with a NUL" {
		t.Errorf("Body: %q %v", b, err)
	}
	if _, err := Body(c, "ArrayChunk"); err == nil {
		t.Error("Body of an Array as an ArrayChunk: no error")
	}
	for _, tc := range []struct{ content, want string }{
		{"ArrayChunk  3", "no NUL"},
		{"ArrayChunk 3\x00abc", "not 3"},
		{"Pickle  3\x00abc", "not supported"},
		{"ArrayChunk  4\x00abc", "body is"},
		{"Array ABC 3\x00abc", "not a SHA-256"},
		{"ArrayChunk \xff 3\x00abc", "not UTF-8"},
	} {
		if _, _, err := Parse([]byte(tc.content)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q): %v, want an error saying %q", tc.content, err, tc.want)
		}
	}
}

// A Tree lists each object once, children first, and an Array names
// equal chunks once in its head and by index in its body.
func TestTree(t *testing.T) {
	data := make([]byte, 2*MaxChunkSize+10)
	a := Array("uint8", []int{len(data)}, "raw", data)
	if len(a.Children) != 2 {
		t.Fatalf("an array of two equal chunks and a short one has %d children, want 2", len(a.Children))
	}
	if body, _ := Body(a.Content, "Array"); !strings.HasSuffix(string(body), `"arraychunk_ids": [0, 0, 1]}`) {
		t.Errorf("Array body %s", body)
	}
	rd := RecordDict([]string{"a", "b"}, []*Tree{ArrayRecord([]string{"x"}, []*Tree{a}), ArrayRecord([]string{"x"}, []*Tree{a})})
	var ids []string
	for _, o := range rd.Objects() {
		ids = append(ids, o.ID)
	}
	want := []string{a.Children[0].ID, a.Children[1].ID, a.ID, rd.Children[0].ID, rd.ID}
	if !slices.Equal(ids, want) {
		t.Errorf("Objects: %v, want %v", ids, want)
	}
	if got, want := rd.Size(), int64(len(data)-MaxChunkSize)+int64(len(a.Content)+len(rd.Children[0].Content)+len(rd.Content))+int64(2*len("ArrayChunk  \x00")+len("5242880")+len("10")); got != want {
		t.Errorf("Size %d, want %d", got, want)
	}
	m, d, err := ArrayData(a.Content, func(id string) []byte {
		for _, c := range a.Children {
			if c.ID == id {
				return c.Content
			}
		}
		return nil
	})
	if err != nil || len(d) != len(data) || m.DType != "uint8" || !slices.Equal(m.Chunks, []int{0, 0, 1}) {
		t.Errorf("ArrayData: %+v, %d bytes, %v", m, len(d), err)
	}
}
