package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"

	"konnq.dev/e2e/fakenode/stream"
)

const slowChunk = 64 << 10

// addCommonHandlers registers the endpoints shared by the plain HTTP server
// and the kubelet server.
func addCommonHandlers(mux *http.ServeMux, addr string) {
	hello := func(w http.ResponseWriter, r *http.Request) {
		// ?close=1: no keep-alive, so a proxying client dials anew next time.
		if r.URL.Query().Get("close") == "1" {
			w.Header().Set("Connection", "close")
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "hello from fakenode %s\n", addr)
	}
	mux.HandleFunc("/{$}", hello)
	mux.HandleFunc("/hello", hello)
	mux.HandleFunc("/pods/", hello)
	mux.HandleFunc("GET /bytes", serveBytes)
	mux.HandleFunc("POST /upload", serveUpload)
	mux.HandleFunc("PUT /upload", serveUpload)
	mux.HandleFunc("GET /slow", serveSlow)
}

func parseSize(r *http.Request) (n int64, seed uint64, err error) {
	q := r.URL.Query()
	n, err = strconv.ParseInt(q.Get("n"), 10, 64)
	if err != nil || n < 0 {
		return 0, 0, fmt.Errorf("query parameter n must be a non-negative integer")
	}
	if s := q.Get("seed"); s != "" {
		seed, err = strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("query parameter seed must be an unsigned integer")
		}
	}
	return n, seed, nil
}

// serveBytes answers GET /bytes?n=N&seed=S with the first N bytes of
// stream.New(S); X-Content-Sha256 carries the hex SHA-256 of the body.
func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, seed, err := parseSize(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	h.Set("X-Content-Sha256", stream.Sum256Hex(seed, n))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	io.CopyN(w, stream.New(seed), n)
}

// serveUpload reads the whole request body and answers "<hex sha256> <count>\n".
func serveUpload(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	count, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, fmt.Sprintf("reading body after %d bytes: %v", count, err), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "%s %d\n", hex.EncodeToString(h.Sum(nil)), count)
}

// serveSlow answers GET /slow?n=N&ms=M[&seed=S] with the same body as /bytes,
// written in 64 KiB chunks, each flushed, with M milliseconds between chunks.
func serveSlow(w http.ResponseWriter, r *http.Request) {
	n, seed, err := parseSize(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var delay time.Duration
	if s := r.URL.Query().Get("ms"); s != "" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ms < 0 {
			http.Error(w, "query parameter ms must be a non-negative integer", http.StatusBadRequest)
			return
		}
		delay = time.Duration(ms) * time.Millisecond
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Content-Length", strconv.FormatInt(n, 10))
	hdr.Set("X-Content-Sha256", stream.Sum256Hex(seed, n))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	src := stream.New(seed)
	buf := make([]byte, slowChunk)
	for sent := int64(0); sent < n; {
		if sent > 0 && delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-r.Context().Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		chunk := buf[:min(int64(len(buf)), n-sent)]
		src.Read(chunk)
		if _, err := w.Write(chunk); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		sent += int64(len(chunk))
	}
}

// logRequests logs one line per request to logger once it completes.
func logRequests(logger *log.Logger, name string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &recordingWriter{ResponseWriter: w}
		next.ServeHTTP(rw, r)
		status := strconv.Itoa(rw.status)
		switch {
		case rw.hijacked, rw.status == 0 && r.Header.Get("Upgrade") != "":
			status = "upgraded"
		case rw.status == 0:
			status = "200"
		}
		logger.Printf("%s %s %s %s -> %s %dB in %s", name, r.RemoteAddr, r.Method, r.URL.RequestURI(), status, rw.bytes, time.Since(start).Round(time.Millisecond))
	})
}

type recordingWriter struct {
	http.ResponseWriter
	status   int
	bytes    int64
	hijacked bool
}

func (w *recordingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *recordingWriter) Flush() { w.FlushError() }

func (w *recordingWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *recordingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.hijacked = true
	}
	return c, brw, err
}

func (w *recordingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
