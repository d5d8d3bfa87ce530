package superlink

import (
	"context"
	"crypto/x509"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/transport"
)

// mtlsLink is a SuperLink that requires node certificates on the Fleet API
// and ServerApp certificates on the Driver API, from one CA with a CRL.
type mtlsLink struct {
	pki     *testkit.PKI
	dir     string
	crlFile string
	src     *certfile.ClientCAFile
	logs    *testkit.SyncBuffer
	sl      *SuperLink
	link    testkit.Link
}

// startMTLS starts the link, with opts applied to its Options (they may
// read m.src).
func startMTLS(t *testing.T, opts ...func(o *Options, m *mtlsLink)) *mtlsLink {
	t.Helper()
	m := &mtlsLink{pki: testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{}), dir: t.TempDir(), logs: &testkit.SyncBuffer{}}
	m.crlFile = filepath.Join(m.dir, "crl.pem")
	m.revoke(t)
	src, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: m.pki.CAFile, CRLFile: m.crlFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	m.src = src
	log := slog.New(slog.NewTextHandler(m.logs, nil))
	o := Options{Logger: log, SweepInterval: time.Hour, State: memstate.New(memstate.Options{Logger: log})}
	for _, f := range opts {
		f(&o, m)
	}
	m.sl = New(o)
	fleet := transport.ClientAuthCredentials(m.pki.Source(), transport.ClientAuth{CAs: src, Role: transport.RoleNode})
	driver := transport.ClientAuthCredentials(m.pki.Source(), transport.ClientAuth{CAs: src, Role: transport.RoleServerApp})
	m.link = testkit.Serve(t, func(ctx context.Context, fl, dl net.Listener) error {
		return m.sl.Serve(ctx, Listeners{Fleet: fl, Driver: dl, FleetCreds: fleet, DriverCreds: driver})
	})
	return m
}

// revoke writes the CRL with serials (and those revoked before).
func (m *mtlsLink) revoke(t *testing.T, serials ...*big.Int) {
	t.Helper()
	var prev *x509.RevocationList
	if l, err := certfile.LoadCRL(m.crlFile, m.pki.CA.Cert); err == nil {
		prev = l
	}
	crl, err := m.pki.CA.SignCRL(prev, serials, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := certfile.WriteFileAtomic(m.crlFile, crl.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
}

// conn dials addr presenting a client certificate of role and name.
func (m *mtlsLink) conn(t *testing.T, addr, role, name string) (*grpc.ClientConn, *selfsigned.Pair) {
	t.Helper()
	id, err := transport.NewIdentity(role, name)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := m.pki.CA.IssueClient(selfsigned.ClientOptions{CommonName: name, URIs: []*url.URL{id.URI()}})
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(m.dir, role+"-"+name+".pem"), filepath.Join(m.dir, role+"-"+name+".key")
	if err := os.WriteFile(cert, pair.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pair.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: m.pki.CAFile, ClientCertificate: cert, ClientKey: key})
	if err != nil {
		t.Fatal(err)
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, pair
}

// TestNodeTiedToCertificate: a node id created under one node certificate
// cannot be used over a connection with another (PermissionDenied); the
// identity is logged when the node joins.
func TestNodeTiedToCertificate(t *testing.T) {
	m := startMTLS(t)
	ctx := ctxT(t)
	aliceConn, _ := m.conn(t, m.link.Fleet, transport.RoleNode, "alice")
	bobConn, _ := m.conn(t, m.link.Fleet, transport.RoleNode, "bob")
	appConn, _ := m.conn(t, m.link.Driver, transport.RoleServerApp, "app")
	alice, bob := flwrproto.NewFleetClient(aliceConn), flwrproto.NewFleetClient(bobConn)
	driver := flwrproto.NewDriverClient(appConn)

	cr, err := alice.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	self := &flwrproto.Node{NodeId: cr.Node.NodeId}
	if !strings.Contains(m.logs.String(), "identity=sepal:node:alice") {
		t.Errorf("the join does not log the identity:\n%s", m.logs)
	}
	run, err := driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatalf("CreateRun with a ServerApp certificate: %v", err)
	}
	now := float64(time.Now().UnixMicro()) / 1e6
	_, err = driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{taskIns(run.RunId, self.NodeId, now)}})
	if err != nil {
		t.Fatal(err)
	}

	// Bob, with alice's node id: refused, and nothing is taken from alice.
	_, err = bob.Ping(ctx, &flwrproto.PingRequest{Node: self, PingInterval: 30})
	wantCode(t, "Ping as another node", err, codes.PermissionDenied, "")
	_, err = bob.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: self})
	wantCode(t, "PullTaskIns as another node", err, codes.PermissionDenied, "")
	pulled, err := alice.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: self})
	if err != nil || len(pulled.TaskInsList) != 1 {
		t.Fatalf("alice's own PullTaskIns: %v, %v; want her one task", pulled, err)
	}
	res := taskRes(pulled.TaskInsList[0], self.NodeId, now)
	_, err = bob.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{res}})
	wantCode(t, "PushTaskRes as another node", err, codes.PermissionDenied, "")
	_, err = bob.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: self})
	wantCode(t, "DeleteNode as another node", err, codes.PermissionDenied, "")
	if _, err := alice.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{res}}); err != nil {
		t.Errorf("alice's own PushTaskRes: %v", err)
	}
	if _, err := alice.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: self}); err != nil {
		t.Errorf("alice's own DeleteNode: %v", err)
	}
}

// TestRevokedWhileConnected: once the CRL that lists a node is loaded, its
// open connection's calls get Unauthenticated with a message for the node;
// the others' go on.
func TestRevokedWhileConnected(t *testing.T) {
	m := startMTLS(t)
	ctx := ctxT(t)
	malConn, mal := m.conn(t, m.link.Fleet, transport.RoleNode, "mallory")
	okConn, _ := m.conn(t, m.link.Fleet, transport.RoleNode, "carol")
	malFleet, okFleet := flwrproto.NewFleetClient(malConn), flwrproto.NewFleetClient(okConn)
	if _, err := malFleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
		t.Fatal(err)
	}
	m.revoke(t, mal.Leaf.SerialNumber)
	if err := m.src.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err := malFleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	wantCode(t, "a call after the revocation", err, codes.Unauthenticated, "sepal:node:mallory")
	wantCode(t, "a call after the revocation", err, codes.Unauthenticated, "has been revoked since it connected")
	if _, err := okFleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
		t.Errorf("another node after the revocation: %v", err)
	}
}
