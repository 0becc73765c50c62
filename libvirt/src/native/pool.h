// A small thread pool, separate from libuv's, for blocking libvirt calls.
//
// libuv's pool has 4 threads by default and is shared with fs/dns/zlib; a batch of 16 suspends must not queue
// behind it. This pool spawns a thread whenever a task arrives and no thread is idle (up to maxThreads), and a
// thread that stays idle for idleTimeout exits, so an idle process holds no threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>

namespace gsl {

struct PoolStats {
  size_t threads;     // live threads
  size_t idle;        // threads waiting for work
  size_t busy;        // threads running a task now
  size_t peakBusy;    // most tasks that ran at once since the last reset
  size_t spawned;     // threads started since the process began
  size_t queued;      // tasks waiting for a thread
  size_t maxThreads;
  long long idleTimeoutMs;
};

class Pool {
 public:
  // Process-wide; never destroyed (detached workers may still hold the mutex at exit).
  static Pool& Instance();

  void Submit(std::function<void()> task);
  PoolStats Stats();
  void ResetPeak();
  void Configure(size_t maxThreads, std::chrono::milliseconds idleTimeout);

 private:
  Pool() = default;
  void WorkerLoop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t threads_ = 0;
  size_t idle_ = 0;
  size_t busy_ = 0;
  size_t peakBusy_ = 0;
  size_t spawned_ = 0;
  size_t maxThreads_ = 64;
  std::chrono::milliseconds idleTimeout_{30000};
};

}  // namespace gsl
