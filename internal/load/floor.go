package load

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/internal/nodesig"
	"github.com/sepal-fl/sepal/transport"
)

// The TLS floor: what moving the same bytes costs a process that only
// decrypts what it receives and encrypts what it sends, over one TLS 1.3
// connection with the SuperLink's policy (transport.ServerConfig) and
// certificate. On a shared machine CPU seconds drift with the neighbours'
// load; the ratio of the SuperLink's CPU time to the floor's, measured
// next to each other, drifts far less.

const (
	envFloor       = "SEPAL_LOAD_FLOOR_SERVER"
	envFloorChecks = "SEPAL_LOAD_FLOOR_CHECKS"
	envFloorPlain  = "SEPAL_LOAD_FLOOR_PLAIN"
	envFloorDir    = "SEPAL_LOAD_FLOOR_DIR"
	envFloorIn     = "SEPAL_LOAD_FLOOR_IN"
	envFloorOut    = "SEPAL_LOAD_FLOOR_OUT"
	envFloorPart   = "SEPAL_LOAD_FLOOR_PART"
)

// MaybeFloorServer runs the floor's server and exits when this process
// was started as one by Floor; otherwise it returns at once. Call it
// first in main (and in TestMain).
func MaybeFloorServer() {
	if os.Getenv(envFloor) == "" {
		return
	}
	run := floorServer
	if os.Getenv(envFloorChecks) != "" {
		run = checksServer
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "floor server:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

type fixedCert struct{ c *tls.Certificate }

func (f fixedCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return f.c, nil }

func floorServer() error {
	dir := os.Getenv(envFloorDir)
	in, err1 := strconv.ParseInt(os.Getenv(envFloorIn), 10, 64)
	out, err2 := strconv.ParseInt(os.Getenv(envFloorOut), 10, 64)
	part, err3 := strconv.Atoi(os.Getenv(envFloorPart))
	if err1 != nil || err2 != nil || err3 != nil || part <= 0 {
		return fmt.Errorf("bad sizes %q %q %q", os.Getenv(envFloorIn), os.Getenv(envFloorOut), os.Getenv(envFloorPart))
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	s := c
	if os.Getenv(envFloorPlain) == "" {
		s = tls.Server(c, transport.ServerConfig(fixedCert{&cert}))
	}
	defer s.Close()
	buf := make([]byte, part)
	for left := in; left > 0; {
		n := min(left, int64(part))
		if _, err := io.ReadFull(s, buf[:n]); err != nil {
			return err
		}
		left -= n
	}
	for left := out; left > 0; {
		n := min(left, int64(part))
		if _, err := s.Write(buf[:n]); err != nil {
			return err
		}
		left -= n
	}
	_, err = io.ReadFull(s, buf[:1]) // the client has read it all
	return err
}

// checksServer hashes SEPAL_LOAD_FLOOR_IN bytes with SHA-256 in pieces of
// SEPAL_LOAD_FLOOR_PART and verifies SEPAL_LOAD_FLOOR_CHECKS ECDSA P-384
// signatures of a timestamp.
func checksServer() error {
	in, err1 := strconv.ParseInt(os.Getenv(envFloorIn), 10, 64)
	part, err2 := strconv.Atoi(os.Getenv(envFloorPart))
	sigs, err3 := strconv.ParseInt(os.Getenv(envFloorChecks), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || part <= 0 {
		return fmt.Errorf("bad sizes %q %q %q", os.Getenv(envFloorIn), os.Getenv(envFloorPart), os.Getenv(envFloorChecks))
	}
	buf := make([]byte, part)
	for i := range buf {
		buf[i] = byte(i)
	}
	for left := in; left > 0; left -= int64(part) {
		sha256.Sum256(buf[:min(left, int64(part))])
	}
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	h := sha256.Sum256([]byte("2026-04-01T12:00:00.000000+00:00"))
	sig, err := ecdsa.SignASN1(rand.Reader, k, h[:])
	if err != nil {
		return err
	}
	for range sigs {
		if !nodesig.Verify(&k.PublicKey, h[:], sig) {
			return errors.New("a valid signature did not verify")
		}
	}
	return nil
}

// Checks runs this executable (see MaybeFloorServer) to do what every
// Flower 1.29.0 SuperLink must do to the same traffic besides TLS: hash
// the in bytes pushed, in objects of part bytes, with SHA-256 (an
// object's id is its hash), and verify sigs ECDSA P-384 signatures (one
// per signed Fleet call), as fast as Sepal's SuperLink does
// (nodesig.Verify); it returns that process's CPU time.
func Checks(ctx context.Context, in int64, part int, sigs int64) (time.Duration, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), envFloor+"=1", envFloorChecks+"="+strconv.FormatInt(sigs, 10),
		envFloorIn+"="+strconv.FormatInt(in, 10), envFloorPart+"="+strconv.Itoa(part))
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("checks floor: %w %s", err, out)
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// Floor starts this executable as the floor's server (see
// MaybeFloorServer) with the certificate Start made for s, sends it in
// bytes and receives out bytes, in writes of part bytes, and returns the
// server process's CPU time (user+sys, its rusage).
func Floor(ctx context.Context, s *SuperLink, in, out int64, part int) (time.Duration, error) {
	return floor(ctx, s, in, out, part, true)
}

// PlainFloor is Floor over plain TCP: what moving the bytes costs a
// process without TLS, as Flower 1.29.0's ServerAppIo is.
func PlainFloor(ctx context.Context, s *SuperLink, in, out int64, part int) (time.Duration, error) {
	return floor(ctx, s, in, out, part, false)
}

func floor(ctx context.Context, s *SuperLink, in, out int64, part int, useTLS bool) (time.Duration, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), envFloor+"=1", envFloorDir+"="+s.dir,
		envFloorIn+"="+strconv.FormatInt(in, 10), envFloorOut+"="+strconv.FormatInt(out, 10), envFloorPart+"="+strconv.Itoa(part))
	if !useTLS {
		cmd.Env = append(cmd.Env, envFloorPlain+"=1")
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	fail := func(err error) (time.Duration, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return 0, fmt.Errorf("TLS floor: %w %s", err, stderr.String())
	}
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fail(err)
	}
	var c net.Conn
	if useTLS {
		cfg, err := transport.ClientConfig(s.TLS)
		if err != nil {
			return fail(err)
		}
		cfg.ServerName = "localhost"
		cfg.MinVersion = tls.VersionTLS13
		c, err = tls.Dial("tcp", strings.TrimSpace(addr), cfg)
		if err != nil {
			return fail(err)
		}
	} else if c, err = net.Dial("tcp", strings.TrimSpace(addr)); err != nil {
		return fail(err)
	}
	defer c.Close()
	buf := make([]byte, part)
	for left := in; left > 0; {
		n := min(left, int64(part))
		if _, err := c.Write(buf[:n]); err != nil {
			return fail(err)
		}
		left -= n
	}
	for left := out; left > 0; {
		n := min(left, int64(part))
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return fail(err)
		}
		left -= n
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return fail(err)
	}
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("TLS floor: %w %s", err, stderr.String())
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}
