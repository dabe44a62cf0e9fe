package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	denyLabel   = "konnq-e2e/deny"
	denyMessage = "denied by fakenode webhook"
)

type webhook struct {
	count atomic.Int64
}

// handler serves POST /validate and GET /count.
func (wh *webhook) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /validate", wh.validate)
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%d\n", wh.count.Load())
	})
	return mux
}

func (wh *webhook) validate(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, "decoding AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "AdmissionReview has no request", http.StatusBadRequest)
		return
	}

	resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	if len(review.Request.Object.Raw) > 0 {
		var obj struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(review.Request.Object.Raw, &obj); err != nil {
			http.Error(w, "decoding request.object: "+err.Error(), http.StatusBadRequest)
			return
		}
		if obj.Metadata.Labels[denyLabel] == "true" {
			resp.Allowed = false
			resp.Result = &metav1.Status{
				Status:  metav1.StatusFailure,
				Message: denyMessage,
				Reason:  metav1.StatusReasonForbidden,
				Code:    http.StatusForbidden,
			}
		}
	}

	out, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Response: resp,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	wh.count.Add(1)
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}
