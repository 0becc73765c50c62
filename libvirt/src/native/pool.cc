#include "pool.h"

#include <algorithm>
#include <thread>

namespace gsl {

Pool& Pool::Instance() {
  static Pool* pool = new Pool();
  return *pool;
}

void Pool::Submit(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_.push_back(std::move(task));
  // Idle threads that have not yet woken still count as idle, so compare against the whole queue.
  if (queue_.size() > idle_ && threads_ < maxThreads_) {
    ++threads_;
    ++spawned_;
    std::thread(&Pool::WorkerLoop, this).detach();
  } else {
    cv_.notify_one();
  }
}

void Pool::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    ++idle_;
    bool hasWork = cv_.wait_for(lock, idleTimeout_, [this] { return !queue_.empty(); });
    --idle_;
    if (!hasWork) {
      --threads_;
      return;
    }
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    ++busy_;
    peakBusy_ = std::max(peakBusy_, busy_);
    lock.unlock();
    task();
    task = nullptr;  // run captured destructors (libvirt unrefs) outside the lock
    lock.lock();
    --busy_;
  }
}

PoolStats Pool::Stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return PoolStats{threads_,   idle_,         busy_,      peakBusy_, spawned_,
                   queue_.size(), maxThreads_, static_cast<long long>(idleTimeout_.count())};
}

void Pool::ResetPeak() {
  std::lock_guard<std::mutex> lock(mu_);
  peakBusy_ = busy_;
}

void Pool::Configure(size_t maxThreads, std::chrono::milliseconds idleTimeout) {
  std::lock_guard<std::mutex> lock(mu_);
  maxThreads_ = std::max<size_t>(1, maxThreads);
  idleTimeout_ = idleTimeout;
  cv_.notify_all();
}

}  // namespace gsl
