package transport_test

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/transport"
)

// A client app turns the error of a failed gRPC call into one message and
// stops, instead of retrying, when the failure is permanent.
func ExampleExplain() {
	// What grpc-go reports when a TLS client reaches a plaintext server.
	err := status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: first record does not look like a TLS handshake"`)

	err = transport.Explain(err, "127.0.0.1:9092", transport.ClientOptions{RootCertificates: "certificates/ca.crt"})
	fmt.Println(err)
	fmt.Println("permanent:", transport.IsPermanent(err), "plaintext peer:", errors.Is(err, transport.ErrPlaintextPeer))

	// Flower 1.8.0's default server address, dialled with TLS.
	err = status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate is valid for localhost, 127.0.0.1, ::1, not 0.0.0.0"`)
	fmt.Println(transport.Explain(err, "0.0.0.0:9092", transport.ClientOptions{RootCertificates: "certificates/ca.crt"}))
	// Output:
	// the server at 127.0.0.1:9092 does not speak TLS: set ClientOptions.Insecure if it serves plaintext, or start it with certificates
	// permanent: true plaintext peer: true
	// 0.0.0.0:9092: 0.0.0.0 is an address servers listen on, not one to dial: dial 127.0.0.1:9092 or the server's host name (a name its certificate holds)
}

func ExampleClientConfig() {
	_, err := transport.ClientConfig(transport.ClientOptions{RootCertificates: "/nonexistent/ca.crt"})
	fmt.Println(err)
	// Output:
	// ClientOptions.RootCertificates /nonexistent/ca.crt: no such file: pass the CA certificate that issued the server's certificate
}
