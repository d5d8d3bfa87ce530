package app

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	pb "github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/golden"
)

// npyFile builds a .npy file with a hand-written header, padded as numpy pads.
func npyFile(major byte, header string, data []byte) []byte {
	lenSize := 2
	if major > 1 {
		lenSize = 4
	}
	hlen := len(header) + 1
	pad := 64 - (8+lenSize+hlen)%64
	var b bytes.Buffer
	b.WriteString("\x93NUMPY")
	b.Write([]byte{major, 0})
	if lenSize == 2 {
		binary.Write(&b, binary.LittleEndian, uint16(hlen+pad))
	} else {
		binary.Write(&b, binary.LittleEndian, uint32(hlen+pad))
	}
	b.WriteString(header)
	b.WriteString(strings.Repeat(" ", pad))
	b.WriteByte('\n')
	b.Write(data)
	return b.Bytes()
}

func TestNPYRoundTrip(t *testing.T) {
	shapes := [][]int{nil, {0}, {1}, {5}, {2, 3}, {3, 0}, {2, 3, 4}, {1, 1, 1, 1}}
	for dtype, dt := range dtypes {
		for _, shape := range shapes {
			t.Run(fmt.Sprintf("%s%v", dtype, shape), func(t *testing.T) {
				n := 1
				for _, d := range shape {
					n *= d
				}
				data := make([]byte, n*dt.size)
				for i := range data {
					data[i] = byte(i*7 + 3)
				}
				in := Array{DType: dtype, Shape: shape, Data: data}
				b, err := EncodeNPY(in)
				if err != nil {
					t.Fatal(err)
				}
				if b[6] != 1 || b[7] != 0 {
					t.Errorf("version %d.%d, want 1.0", b[6], b[7])
				}
				hlen := int(binary.LittleEndian.Uint16(b[8:10]))
				if (10+hlen)%64 != 0 || b[10+hlen-1] != '\n' {
					t.Errorf("header of %d bytes: data not 64-aligned or no trailing newline", hlen)
				}
				if !strings.Contains(string(b[10:10+hlen]), "'descr': '"+dt.descr+"'") {
					t.Errorf("header %q lacks descr %s", b[10:10+hlen], dt.descr)
				}
				out, err := DecodeNPY(b)
				if err != nil {
					t.Fatal(err)
				}
				if out.DType != dtype || !sameShape(out.Shape, shape) || !bytes.Equal(out.Data, data) {
					t.Errorf("round trip gave %s%v %x, want %s%v %x", out.DType, out.Shape, out.Data, dtype, shape, data)
				}
			})
		}
	}
}

// TestNPYHeaderText pins the header numpy 1.24 writes, growth padding included.
func TestNPYHeaderText(t *testing.T) {
	b, err := EncodeNPY(Float64s([]float64{1, 2, 3, 4, 5, 6}, 2, 3))
	if err != nil {
		t.Fatal(err)
	}
	want := "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }" + strings.Repeat(" ", 20)
	if got := string(b[10:128]); !strings.HasPrefix(got, want) || strings.TrimRight(got[len(want):len(got)-1], " ") != "" || got[len(got)-1] != '\n' {
		t.Errorf("header = %q, want %q padded to 128 bytes", got, want)
	}
	b, err = EncodeNPY(Array{DType: "int32", Data: []byte{1, 0, 0, 0}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b[10:]), "{'descr': '<i4', 'fortran_order': False, 'shape': (), }") {
		t.Errorf("0-d header = %q", b[10:70])
	}
}

// TestNPYGolden checks the codec against the arrays a Flower 1.8.0
// SuperNode sent (numpy 1.24 numpy.save output): decode, values, and
// re-encoding byte for byte.
func TestNPYGolden(t *testing.T) {
	req := golden.Decode(t, "0027-Fleet-PushTaskRes.req.bin", "flwr.proto.PushTaskResRequest").(*pb.PushTaskResRequest)
	p := req.GetTaskResList()[0].GetTask().GetRecordset().GetParameters()["fitres.parameters"]
	if p == nil || len(p.DataValues) != 2 {
		t.Fatalf("golden fitres.parameters missing: %v", p)
	}
	want := []struct {
		shape []int
		val   float32
		size  int
	}{{[]int{3}, 0.5, 140}, {[]int{2, 2}, -0.5, 144}}
	for i, v := range p.DataValues {
		if len(v.Data) != want[i].size || binary.LittleEndian.Uint16(v.Data[8:10]) != 118 {
			t.Errorf("golden array %d: %d bytes, header %d; the test's premise is wrong", i, len(v.Data), binary.LittleEndian.Uint16(v.Data[8:10]))
		}
		a, err := DecodeNPY(v.Data)
		if err != nil {
			t.Fatalf("array %d: %v", i, err)
		}
		if a.DType != "float32" || !sameShape(a.Shape, want[i].shape) {
			t.Errorf("array %d: %s%v, want float32%v", i, a.DType, a.Shape, want[i].shape)
		}
		vals, _ := a.Float32s()
		for _, x := range vals {
			if x != want[i].val {
				t.Errorf("array %d: value %v, want %v", i, x, want[i].val)
			}
		}
		again, err := EncodeNPY(a)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, v.Data) {
			t.Errorf("array %d: EncodeNPY differs from numpy.save:\n got %q\nwant %q", i, again, v.Data)
		}
		fresh, _ := EncodeNPY(Float32s(vals, want[i].shape...))
		if !bytes.Equal(fresh, v.Data) {
			t.Errorf("array %d: Float32s + EncodeNPY differs from numpy.save", i)
		}
	}
}

func TestNPYVersion2(t *testing.T) {
	data := []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0x40}
	a, err := DecodeNPY(npyFile(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := a.Float32s(); len(v) != 2 || v[0] != 1 || v[1] != 2 {
		t.Errorf("v2 decode = %v", v)
	}
	// A header too long for 1.0 is written as 2.0 and read back.
	shape := make([]int, 30000)
	for i := range shape {
		shape[i] = 1
	}
	big := Array{DType: "int64", Shape: shape, Data: make([]byte, 8)}
	b, err := EncodeNPY(big)
	if err != nil {
		t.Fatal(err)
	}
	if b[6] != 2 {
		t.Fatalf("long header written as version %d, want 2", b[6])
	}
	if (12+binary.LittleEndian.Uint32(b[8:12]))%64 != 0 {
		t.Error("v2 data not 64-aligned")
	}
	back, err := DecodeNPY(b)
	if err != nil {
		t.Fatal(err)
	}
	if !sameShape(back.Shape, shape) {
		t.Error("v2 shape lost")
	}
}

func TestNPYRefused(t *testing.T) {
	f4 := []byte{0, 0, 0, 0}
	cases := []struct {
		name, header string
		data         []byte
		major        byte
		want         []string // each must appear in the error
		unsupported  bool
	}{
		{"float16", "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", f4, 1, []string{"<f2", "float of 2 bytes"}, true},
		{"big-endian", "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", f4, 1, []string{">f4", "big-endian"}, true},
		{"bool", "{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }", f4, 1, []string{"|b1", "boolean"}, true},
		{"uint8", "{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", f4, 1, []string{"|u1", "unsigned"}, true},
		{"object", "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", []byte("\x80\x04pickle"), 1, []string{"|O", "pickled"}, true},
		{"fortran", "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", f4, 1, []string{"Fortran order"}, true},
		{"structured", "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", f4, 1, []string{"structured", "'a'"}, true},
		{"version 4", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", f4, 4, []string{"version 4.0"}, true},
		{"short data", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", f4, 1, []string{"needs 8 bytes", "holds 4"}, false},
		{"long data", "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", []byte{1, 2, 3, 4, 5}, 1, []string{"needs 4 bytes"}, false},
		{"no shape", "{'descr': '<f4', 'fortran_order': False, }", f4, 1, []string{"'shape'"}, false},
		{"extra key", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1, }", f4, 1, []string{"unknown key"}, false},
		{"negative", "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", f4, 1, []string{"negative"}, false},
		{"not a dict", "['descr']", f4, 1, []string{"not a dict"}, false},
		{"garbage", "{'descr': <f4}", f4, 1, []string{"unexpected"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeNPY(npyFile(c.major, c.header, c.data))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if errors.Is(err, ErrUnsupported) != c.unsupported {
				t.Errorf("errors.Is(ErrUnsupported) = %v, want %v (%v)", !c.unsupported, c.unsupported, err)
			}
		})
	}
	for _, b := range [][]byte{nil, []byte("PK\x03\x04 not npy"), []byte("\x93NUMPY\x01\x00\xff\xff{")} {
		if _, err := DecodeNPY(b); err == nil {
			t.Errorf("DecodeNPY(%q) accepted", b)
		}
	}
	if _, err := EncodeNPY(Array{DType: "float16", Shape: []int{1}, Data: []byte{0, 0}}); err == nil || !strings.Contains(err.Error(), "float16") {
		t.Errorf("EncodeNPY(float16) = %v, want an error naming float16", err)
	}
	if _, err := EncodeNPY(Array{DType: "float32", Shape: []int{2}, Data: []byte{0, 0}}); err == nil {
		t.Error("EncodeNPY with short data accepted")
	}
}

func TestArrayHelpers(t *testing.T) {
	a := Float32s([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
	if !sameShape(a.Shape, []int{2, 3}) {
		t.Errorf("shape %v", a.Shape)
	}
	if _, err := a.Float64s(); err == nil {
		t.Error("Float64s of a float32 array accepted")
	}
	v, err := Float64s([]float64{-1.5, 2.25}).Float64s()
	if err != nil || v[0] != -1.5 || v[1] != 2.25 {
		t.Errorf("Float64s = %v, %v", v, err)
	}
	iv, err := Int64s([]int64{-7, 1 << 40}).Values()
	if err != nil || iv[0] != -7 || iv[1] != 1<<40 {
		t.Errorf("Int64s.Values = %v, %v", iv, err)
	}
	iv, err = Int32s([]int32{-3}).withValues([]float64{-2.6}).Values()
	if err != nil || iv[0] != -3 {
		t.Errorf("int32 withValues rounding = %v, %v", iv, err)
	}
	defer func() {
		if recover() == nil {
			t.Error("Float32s with a wrong shape did not panic")
		}
	}()
	Float32s([]float32{1, 2, 3}, 2, 2)
}

func FuzzDecodeNPY(f *testing.F) {
	for _, a := range []Array{Float32s([]float32{1, 2, 3}), Float64s([]float64{1}, 1, 1), Int32s(nil, 0), {DType: "int64", Data: make([]byte, 8)}} {
		b, _ := EncodeNPY(a)
		f.Add(b)
	}
	f.Add(npyFile(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", []byte{0, 0, 0, 0}))
	f.Add(npyFile(1, "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeNPY(b)
		if err != nil {
			return
		}
		enc, err := EncodeNPY(a)
		if err != nil {
			t.Fatalf("decoded %s%v but cannot encode it: %v", a.DType, a.Shape, err)
		}
		back, err := DecodeNPY(enc)
		if err != nil {
			t.Fatalf("re-decoding our own encoding: %v", err)
		}
		if back.DType != a.DType || !sameShape(back.Shape, a.Shape) || !bytes.Equal(back.Data, a.Data) {
			t.Fatal("round trip changed the array")
		}
	})
}
