package main

import (
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

// BenchmarkRecvTensorHop: the latency one party-to-party message gains from the guards. TF's
// RecvTensor travels caller (h2c) -> caller's outbound guard -> mTLS -> callee's grpc inbound
// (authorization, a new stream to the backend) -> the callee's TF server, and its answer back.
// "direct" is the same call with TLS off (h2c straight to the backend); "guards" is the mesh
// path. The echo backend answers with the request, padded to the size of a typical tensor
// message of ABY3 on the digits MLP (about 500 bytes).
//
//	go test -run '^$' -bench RecvTensorHop -benchtime 3000x .
func BenchmarkRecvTensorHop(b *testing.B) {
	ca := newCA(b, "model-ca")
	be := startBackend(b)
	c1 := ca.issue(b, "server1")
	sock := filepath.Join(shortDir(b), "server1.grpc.sock")
	startGuard(b, Config{Identity: "server1", CA: ca.path, Cert: c1.cert, Key: c1.key, Devices: testDevices,
		Inbound: []Inbound{{Kind: "grpc", Listen: "unix:" + sock, Backend: be.addr, Rules: []Rule{
			{Identities: []string{"server0"}, Methods: []string{recvTensorMethod}}}}}})
	c0 := ca.issue(b, "server0")
	g0, _ := startGuard(b, Config{Identity: "server0", CA: ca.path, Cert: c0.cert, Key: c0.key,
		Outbound: []Outbound{{Listen: "127.0.0.1:0", Dial: "unix:" + sock, Expect: "server1"}}})

	req := recvTensorRequest(rkey("/job:tfe/replica:0/task:1/device:CPU:0", "/job:tfe/replica:0/task:0/device:CPU:0", "s"))
	req = protowire.AppendTag(req, 15, protowire.BytesType) // padding: an unknown field, skipped by the check
	req = protowire.AppendBytes(req, make([]byte, 512))
	for _, c := range []struct{ name, addr string }{{"direct", be.addr}, {"guards", g0.addr(0)}} {
		cc, err := grpc.NewClient("passthrough:///"+c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			if _, err := unary(cc, recvTensorMethod, req); err != nil { // connect, handshake
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := unary(cc, recvTensorMethod, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		cc.Close()
	}
}
