package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func statsRow(rows []CallStats, listener, identity, method string) (CallStats, bool) {
	for _, r := range rows {
		if r.Listener == listener && r.Identity == identity && r.Method == method {
			return r, true
		}
	}
	return CallStats{}, false
}

// Every admitted call is counted with its message bytes each way; refused calls are not.
func TestCallStats(t *testing.T) {
	f := newGRPCFixture(t)
	listener := "grpc unix:" + f.sock
	s1 := f.client(t, "server1")
	src := "/job:tfe/replica:0/task:0/device:CPU:0"
	req := recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:1/device:CPU:0", "share0"))
	for k := 0; k < 3; k++ {
		if _, err := unary(s1, recvTensorMethod, req); err != nil {
			t.Fatal(err)
		}
	}
	// refused: counted in the refusals, not here
	_, _ = unary(s1, recvTensorMethod, recvTensorRequest(rkey(src, "/job:tfe/replica:0/task:0/device:CPU:0", "x")))
	_, _ = unary(s1, runGraph, []byte("x"))
	// A call is recorded as its handler returns, which may be just after the client has its answer.
	n := int64(len(req))
	want := CallStats{Listener: listener, Identity: "server1", Method: recvTensorMethod, Calls: 3,
		RequestBytes: 3 * n, ResponseBytes: 3 * n} // the echo backend answers with the request
	var after CallStats
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if after, _ = statsRow(callStatsAll.snapshot(), listener, "server1", recvTensorMethod); after == want {
			break
		}
	}
	if after != want {
		t.Fatalf("stats %+v, want %+v", after, want)
	}
	if _, ok := statsRow(callStatsAll.snapshot(), listener, "server1", runGraph); ok {
		t.Fatalf("a refused method was counted: %+v", callStatsAll.snapshot())
	}

	// Served as JSON by the guard itself.
	rec := httptest.NewRecorder()
	callStatsAll.serve(rec, "server0")
	var body struct {
		Identity string      `json:"identity"`
		Calls    []CallStats `json:"calls"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK || body.Identity != "server0" {
		t.Fatalf("stats answer %d %q: %v", rec.Code, rec.Body.String(), err)
	}
	if r, ok := statsRow(body.Calls, listener, "server1", recvTensorMethod); !ok || r.Calls != after.Calls {
		t.Fatalf("served stats %+v lack the RecvTensor row %+v", body.Calls, after)
	}
}
