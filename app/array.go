package app

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Float32s returns a float32 Array holding vals. With no shape it is 1-d of
// len(vals); a shape whose size differs from len(vals) panics, as a
// programming error.
func Float32s(vals []float32, shape ...int) Array {
	shape = shapeFor(len(vals), shape)
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return Array{DType: "float32", Shape: shape, Data: b}
}

// Float64s returns a float64 Array holding vals; shape as for Float32s.
func Float64s(vals []float64, shape ...int) Array {
	shape = shapeFor(len(vals), shape)
	b := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(v))
	}
	return Array{DType: "float64", Shape: shape, Data: b}
}

// Int64s returns an int64 Array holding vals; shape as for Float32s.
func Int64s(vals []int64, shape ...int) Array {
	shape = shapeFor(len(vals), shape)
	b := make([]byte, 8*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
	}
	return Array{DType: "int64", Shape: shape, Data: b}
}

// Int32s returns an int32 Array holding vals; shape as for Float32s.
func Int32s(vals []int32, shape ...int) Array {
	shape = shapeFor(len(vals), shape)
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	}
	return Array{DType: "int32", Shape: shape, Data: b}
}

func shapeFor(n int, shape []int) []int {
	if shape == nil {
		return []int{n}
	}
	size := 1
	for _, d := range shape {
		size *= d
	}
	if size != n {
		panic(fmt.Sprintf("shape %v holds %d values, got %d", shape, size, n))
	}
	return append([]int(nil), shape...)
}

// Float32s returns the values of a float32 array, in C order; an error for
// any other dtype or a data length that does not match the shape.
func (a Array) Float32s() ([]float32, error) {
	if err := a.want("float32"); err != nil {
		return nil, err
	}
	out := make([]float32, len(a.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(a.Data[4*i:]))
	}
	return out, nil
}

// Float64s returns the values of a float64 array, in C order; an error for
// any other dtype or a data length that does not match the shape.
func (a Array) Float64s() ([]float64, error) {
	if err := a.want("float64"); err != nil {
		return nil, err
	}
	out := make([]float64, len(a.Data)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(a.Data[8*i:]))
	}
	return out, nil
}

// Values returns the elements of an array of any supported dtype as float64
// (int64 values beyond 2^53 lose precision).
func (a Array) Values() ([]float64, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	out := make([]float64, a.Size())
	for i := range out {
		switch a.DType {
		case "float32":
			out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(a.Data[4*i:])))
		case "float64":
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(a.Data[8*i:]))
		case "int32":
			out[i] = float64(int32(binary.LittleEndian.Uint32(a.Data[4*i:])))
		case "int64":
			out[i] = float64(int64(binary.LittleEndian.Uint64(a.Data[8*i:])))
		}
	}
	return out, nil
}

// withValues returns an array of a's dtype and shape holding vals
// (converted; integers rounded to nearest).
func (a Array) withValues(vals []float64) Array {
	out := Array{DType: a.DType, Shape: append([]int(nil), a.Shape...), Data: make([]byte, len(vals)*a.ItemSize())}
	for i, v := range vals {
		switch a.DType {
		case "float32":
			binary.LittleEndian.PutUint32(out.Data[4*i:], math.Float32bits(float32(v)))
		case "float64":
			binary.LittleEndian.PutUint64(out.Data[8*i:], math.Float64bits(v))
		case "int32":
			binary.LittleEndian.PutUint32(out.Data[4*i:], uint32(int32(math.Round(v))))
		case "int64":
			binary.LittleEndian.PutUint64(out.Data[8*i:], uint64(int64(math.Round(v))))
		}
	}
	return out
}

func (a Array) want(dtype string) error {
	if a.DType != dtype {
		return fmt.Errorf("array is %s, not %s", a.DType, dtype)
	}
	return a.check()
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
