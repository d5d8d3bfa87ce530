package superlink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/transport"
)

// The benchmark's client side runs in a child process (this test binary,
// re-executed with these variables set), so that the SuperLink's heap is
// measured alone.
const (
	envClient = "SEPAL_BENCH_CLIENT"
	envFleet  = "SEPAL_BENCH_FLEET"
	envDriver = "SEPAL_BENCH_DRIVER"
	envCA     = "SEPAL_BENCH_CA"
	envNodes  = "SEPAL_BENCH_NODES"
	envMiB    = "SEPAL_BENCH_MIB"
)

// modelMiB is the size of the parameters of the benchmark's round.
const modelMiB = 100

func TestMain(m *testing.M) {
	if os.Getenv(envClient) != "" {
		if err := benchClient(); err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	pgtest.Main(m)
}

// BenchmarkFedAvgRound measures the SuperLink's peak heap during one
// FedAvg-shaped round over gRPC and TLS on loopback: the same 100 MiB of
// parameters (4 float32 arrays, random, identical for every node) pushed as
// N TaskIns, one PushTaskIns per node as the 1.8.0 ServerApp does, pulled
// by N nodes at the same time, each answering a small TaskRes that the
// driver then pulls.
//
// peak-heap-MiB is the highest /memory/classes/heap/objects:bytes sampled
// every 2 ms: the memory the heap's objects occupy, garbage not yet
// collected included, which is what the process needs. peak-live-MiB is
// the highest /gc/heap/live:bytes, the heap marked live by a GC, which
// leaves out garbage but lags. copy-per-node-MiB is what holding a copy
// per TaskIns, as Flower 1.8.0 does, needs for the parameters alone.
//
// Run it with: go test ./superlink -run '^$' -bench FedAvgRound -benchtime 1x
func BenchmarkFedAvgRound(b *testing.B) {
	for _, n := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) { benchRound(b, n) })
	}
}

func benchRound(b *testing.B, n int) {
	creds, caFile := testCerts(b)
	sl := New(Options{State: memstate.New(memstate.Options{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	link := testkit.Serve(b, serveOn(sl, creds))

	var peakHeap, peakLive uint64
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		runtime.GC()
		runtime.GC() // twice: sync.Pools are emptied over two cycles
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		var heap, live uint64
		go func() {
			defer wg.Done()
			heap, live = samplePeak(stop)
		}()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envClient+"=1", envFleet+"="+link.Fleet, envDriver+"="+link.Driver,
			envCA+"="+caFile, envNodes+"="+strconv.Itoa(n), envMiB+"="+strconv.Itoa(modelMiB))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		b.StartTimer()
		err := cmd.Run()
		b.StopTimer()
		close(stop)
		wg.Wait()
		if err != nil {
			b.Fatalf("client process: %v\n%s", err, out.String())
		}
		peakHeap, peakLive = max(peakHeap, heap), max(peakLive, live)
		if st, err := sl.state.Stats(context.Background()); err != nil || st.TaskInsWaiting+st.TaskInsDelivered+st.TaskResWaiting != 0 || st.Blobs != 0 {
			b.Fatalf("state after the round still holds tasks: %+v %v", st, err)
		}
	}
	const mib = 1 << 20
	b.ReportMetric(float64(peakHeap)/mib, "peak-heap-MiB")
	b.ReportMetric(float64(peakHeap)/(modelMiB*mib), "peak-heap/model")
	b.ReportMetric(float64(peakLive)/mib, "peak-live-MiB")
	b.ReportMetric(float64(n*modelMiB), "copy-per-node-MiB")
}

// samplePeak reads the heap metrics every 2 ms until stop is closed and
// returns their highest values.
func samplePeak(stop <-chan struct{}) (heap, live uint64) {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}}
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		metrics.Read(s)
		heap, live = max(heap, s[0].Value.Uint64()), max(live, s[1].Value.Uint64())
		select {
		case <-stop:
			return heap, live
		case <-t.C:
		}
	}
}

// benchModel is the round's parameters: four float32 arrays filling
// mib MiB, random but the same in every TaskIns.
func benchModel(mib int) *flwrproto.ParametersRecord {
	r := rand.New(rand.NewPCG(7, 11))
	pr := &flwrproto.ParametersRecord{}
	per := mib << 20 / 4
	for i := range 4 {
		d := make([]byte, per)
		for j := 0; j+8 <= len(d); j += 8 {
			binary.LittleEndian.PutUint64(d[j:], r.Uint64())
		}
		pr.DataKeys = append(pr.DataKeys, strconv.Itoa(i))
		pr.DataValues = append(pr.DataValues, &flwrproto.Array{Dtype: "<f4", Shape: []int32{int32(per / 4)}, Stype: "numpy.ndarray", Data: d})
	}
	return pr
}

// benchClient is the child process: a ServerApp and N SuperNodes.
func benchClient() error {
	n, err := strconv.Atoi(os.Getenv(envNodes))
	if err != nil {
		return err
	}
	mib, err := strconv.Atoi(os.Getenv(envMiB))
	if err != nil {
		return err
	}
	creds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: os.Getenv(envCA)})
	if err != nil {
		return err
	}
	conn := func(addr string, c credentials.TransportCredentials) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(c),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)))
	}
	dc, err := conn(os.Getenv(envDriver), creds)
	if err != nil {
		return err
	}
	defer dc.Close()
	drv := flwrproto.NewDriverClient(dc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// Each SuperNode has its own connection, as separate processes would.
	nodes := make([]flwrproto.FleetClient, n)
	ids := make([]int64, n)
	for i := range nodes {
		c, err := conn(os.Getenv(envFleet), creds)
		if err != nil {
			return err
		}
		defer c.Close()
		nodes[i] = flwrproto.NewFleetClient(c)
		r, err := nodes[i].CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
		if err != nil {
			return err
		}
		ids[i] = r.Node.NodeId
	}
	run, err := drv.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		return err
	}
	model := benchModel(mib)
	now := float64(time.Now().UnixMicro()) / 1e6
	var taskIDs []string
	for _, id := range ids {
		ins := taskIns(run.RunId, id, now)
		ins.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"fitins.parameters": model}}
		r, err := drv.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ins}})
		if err != nil {
			return err
		}
		taskIDs = append(taskIDs, r.TaskIds...)
	}

	errc := make(chan error, n)
	for i := range nodes {
		go func() { errc <- benchNode(ctx, nodes[i], ids[i], model) }()
	}
	for range n {
		if err := <-errc; err != nil {
			return err
		}
	}
	for len(taskIDs) > 0 {
		r, err := drv.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{Node: &flwrproto.Node{Anonymous: true}, TaskIds: taskIDs})
		if err != nil {
			return err
		}
		for _, tr := range r.TaskResList {
			taskIDs = slices.DeleteFunc(taskIDs, func(id string) bool { return id == tr.Task.Ancestry[0] })
		}
		if len(r.TaskResList) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

func benchNode(ctx context.Context, c flwrproto.FleetClient, id int64, model *flwrproto.ParametersRecord) error {
	r, err := c.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: &flwrproto.Node{NodeId: id}})
	if err != nil {
		return err
	}
	if len(r.TaskInsList) != 1 {
		return fmt.Errorf("node %d pulled %d TaskIns, want 1", id, len(r.TaskInsList))
	}
	ins := r.TaskInsList[0]
	got := ins.GetTask().GetRecordset().GetParameters()["fitins.parameters"]
	if len(got.GetDataValues()) != len(model.DataValues) {
		return errors.New("parameters lost on the way")
	}
	for i, a := range got.DataValues {
		if !bytes.Equal(a.Data, model.DataValues[i].Data) {
			return fmt.Errorf("node %d: array %d differs from the one pushed", id, i)
		}
	}
	r = nil
	res := taskRes(ins, id, float64(time.Now().UnixMicro())/1e6)
	res.Task.Recordset = &flwrproto.RecordSet{Metrics: map[string]*flwrproto.MetricsRecord{
		"fitres.num_examples": {Data: map[string]*flwrproto.MetricsRecordValue{"num_examples": {Value: &flwrproto.MetricsRecordValue_Sint64{Sint64: 10}}}},
	}}
	_, err = c.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{res}})
	return err
}
