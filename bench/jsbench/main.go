// jsbench measures the raw limits of NATS JetStream on this machine: persisted
// publish, consume+ack, and both at once, with the same message size as the
// tiny workload. It talks to a nats-server started by bench/run.py with
// sync_interval "always" or the default, and prints one JSON line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	url := flag.String("url", "nats://127.0.0.1:4222", "nats-server URL")
	msgs := flag.Int("msgs", 20000, "messages per phase")
	size := flag.Int("size", 1024, "payload bytes")
	window := flag.Int("window", 256, "async publishes in flight")
	batch := flag.Int("batch", 256, "messages buffered per pull")
	label := flag.String("sync", "", "sync mode label copied into the output")
	flag.Parse()

	nc, err := connect(*url, 15*time.Second)
	check(err, "connect")
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(*window))
	check(err, "jetstream")
	ctx := context.Background()

	payload := make([]byte, *size)
	for i := range payload {
		payload[i] = byte(i*131 + 7)
	}

	// Phase 1 and 2: publish everything, then consume everything.
	s1 := stream(ctx, js, "JSB_PUB", "jsb.pub")
	pub := rate(*msgs, func() { publish(js, "jsb.pub", payload, *msgs) })
	if inf, err := s1.Info(ctx); err == nil && int(inf.State.Msgs) != *msgs {
		fail(fmt.Sprintf("published %d, stream holds %d", *msgs, inf.State.Msgs))
	}
	cons := rate(*msgs, func() { consume(ctx, s1, *msgs, *batch) })
	check(js.DeleteStream(ctx, "JSB_PUB"), "delete stream")

	// Phase 3: publisher and consumer at once; done when every message is
	// consumed and acked (the stream is empty again).
	s2 := stream(ctx, js, "JSB_PS", "jsb.ps")
	both := rate(*msgs, func() {
		done := make(chan struct{})
		go func() { consume(ctx, s2, *msgs, *batch); close(done) }()
		publish(js, "jsb.ps", payload, *msgs)
		<-done
	})
	check(js.DeleteStream(ctx, "JSB_PS"), "delete stream")

	out, _ := json.Marshal(map[string]any{
		"bench_result": 1, "driver": "jsbench", "sync": *label, "msgs": *msgs, "size": *size,
		"pub": pub, "consume": cons, "pubsub": both,
	})
	fmt.Println(string(out))
}

func connect(url string, within time.Duration) (*nats.Conn, error) {
	deadline := time.Now().Add(within)
	for {
		nc, err := nats.Connect(url)
		if err == nil || time.Now().After(deadline) {
			return nc, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stream makes a file-backed work-queue stream (what a job queue uses) with
// one durable pull consumer "c".
func stream(ctx context.Context, js jetstream.JetStream, name, subj string) jetstream.Stream {
	_ = js.DeleteStream(ctx, name) // left over from an interrupted run
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{subj}, Storage: jetstream.FileStorage,
		Retention: jetstream.WorkQueuePolicy, Replicas: 1,
	})
	check(err, "create stream")
	_, err = s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000, AckWait: time.Minute,
	})
	check(err, "create consumer")
	return s
}

func publish(js jetstream.JetStream, subj string, payload []byte, n int) {
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := 0; i < n; i++ {
		f, err := js.PublishAsync(subj, payload, jetstream.WithStallWait(time.Minute))
		check(err, "publish")
		futures = append(futures, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		fail("publish: timed out waiting for acks")
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			fail("publish ack: " + err.Error())
		}
	}
}

func consume(ctx context.Context, s jetstream.Stream, n, batch int) {
	c, err := s.Consumer(ctx, "c")
	check(err, "consumer")
	it, err := c.Messages(jetstream.PullMaxMessages(batch))
	check(err, "messages")
	var got atomic.Int64
	for int(got.Load()) < n {
		m, err := it.Next()
		check(err, "next")
		check(m.Ack(), "ack")
		got.Add(1)
	}
	it.Stop()
	// Acks are asynchronous: done when the work queue is empty.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		info, err := s.Info(ctx)
		check(err, "stream info")
		if info.State.Msgs == 0 {
			return
		}
		if time.Now().After(deadline) {
			fail(fmt.Sprintf("consume: %d messages still unacked", info.State.Msgs))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func rate(n int, f func()) float64 {
	t0 := time.Now()
	f()
	return float64(n) / time.Since(t0).Seconds()
}

func check(err error, what string) {
	if err != nil {
		fail(what + ": " + err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "jsbench:", msg)
	os.Exit(1)
}
