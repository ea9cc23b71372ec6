package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthValidate(t *testing.T) {
	var none *Health
	if err := none.validate(); err != nil {
		t.Fatalf("nil health: %v", err)
	}
	ok := &Health{Listen: "tcp:0.0.0.0:5444", Backend: "127.0.0.1:8081", Paths: []string{"/healthz"}}
	if err := ok.validate(); err != nil {
		t.Fatalf("valid health refused: %v", err)
	}
	for name, h := range map[string]*Health{
		"remote backend": {Listen: "tcp:0.0.0.0:5444", Backend: "10.0.0.1:8081", Paths: []string{"/healthz"}},
		"no paths":       {Listen: "tcp:0.0.0.0:5444", Backend: "127.0.0.1:8081"},
		"query in path":  {Listen: "tcp:0.0.0.0:5444", Backend: "127.0.0.1:8081", Paths: []string{"/x?y"}},
		"bad listen":     {Listen: "nope", Backend: "127.0.0.1:8081", Paths: []string{"/healthz"}},
	} {
		if err := h.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHealthPassesOnlyListedGETs(t *testing.T) {
	var seen []string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok": true}`)
	}))
	defer backend.Close()
	addr := strings.TrimPrefix(backend.URL, "http://")
	s := newHealth(&Health{Listen: "tcp:127.0.0.1:0", Backend: addr, Paths: []string{"/healthz", "/v1/public-key"}}, "server0")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(l) }()
	defer l.Close()
	base := "http://" + l.Addr().String()
	get := func(method, path string) int {
		req, _ := http.NewRequest(method, base+path, strings.NewReader("body"))
		req.Header.Set("Authorization", "secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/healthz", 200}, {"GET", "/v1/public-key", 200}, {"HEAD", "/healthz", 200},
		{"GET", "/v1/models/x/share", 403}, {"GET", "/healthz?x=1", 403}, {"GET", "/healthz/", 403},
		{"POST", "/healthz", 405}, {"PUT", "/v1/public-key", 405},
	} {
		if got := get(c.method, c.path); got != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, got, c.want)
		}
	}
	want := []string{"GET /healthz auth=", "GET /v1/public-key auth=", "HEAD /healthz auth="}
	if strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Errorf("backend saw %q, want %q", seen, want)
	}
}
