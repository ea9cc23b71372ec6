package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

func TestRefusalLogCountsEvictsAndOrders(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newRefusalLog(func() time.Time { return now })
	l.record("grpc", "server1", "call X: no rule admits it")
	now = now.Add(time.Second)
	l.record("grpc", "server1", "call X: no rule admits it")
	l.record("http", "", "request GET /: no verified client certificate")
	got := l.snapshot()
	if len(got) != 2 {
		t.Fatalf("want 2 distinct refusals, got %+v", got)
	}
	if got[0].Identity != "server1" || got[0].Count != 2 || !got[0].FirstSeen.Before(got[0].LastSeen) {
		t.Fatalf("first entry: %+v", got[0])
	}
	if got[1].Identity != "-" {
		t.Fatalf("an unnamed caller is '-': %+v", got[1])
	}
	for i := 0; i < maxRefusals+10; i++ {
		now = now.Add(time.Second)
		l.record("grpc", fmt.Sprintf("id%d", i), "r")
	}
	got = l.snapshot()
	if len(got) != maxRefusals {
		t.Fatalf("bounded at %d, got %d", maxRefusals, len(got))
	}
	if got[0].Identity != fmt.Sprintf("id%d", maxRefusals+9) {
		t.Fatalf("most recent first, got %+v", got[0])
	}
	for _, r := range got {
		if r.Identity == "server1" || r.Identity == "-" {
			t.Fatalf("oldest entries should have been evicted: %+v", r)
		}
	}
}

// What the guard refused is what its health listener reports: identity and reason, no payload.
func TestRefusalsAreReportedOnTheHealthListener(t *testing.T) {
	f := newGRPCFixture(t)
	expired := f.ca.issueValid(t, "share-g7", time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	_, err := unary(dialGuard(t, "unix://"+f.sock, clientTLSFor(t, f.ca, &expired, "server0")), runGraph, []byte("x"))
	wantCode(t, err, codes.Unavailable)
	_, err = unary(f.client(t, "server2"), runGraph, []byte("x"))
	wantCode(t, err, codes.PermissionDenied)

	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the refusals path must not reach the backend: %s", r.URL.Path)
	}))
	defer backend.Close()
	s := newHealth(&Health{Listen: "tcp:127.0.0.1:0", Backend: strings.TrimPrefix(backend.URL, "http://"),
		Paths: []string{"/healthz", RefusalsPath}}, "server0")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(l) }()
	defer l.Close()

	var doc struct {
		Identity string    `json:"identity"`
		Refusals []Refusal `json:"refusals"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + l.Addr().String() + RefusalsPath)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if find(doc.Refusals, "share-g7", "handshake: certificate has expired") &&
			find(doc.Refusals, "server2", "call "+runGraph+": no rule admits it") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusals not reported: %+v", doc)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if doc.Identity != "server0" {
		t.Fatalf("identity %q", doc.Identity)
	}
}

func find(rs []Refusal, identity, reasonPrefix string) bool {
	for _, r := range rs {
		if r.Identity == identity && strings.HasPrefix(r.Reason, reasonPrefix) && r.Count >= 1 {
			return true
		}
	}
	return false
}
