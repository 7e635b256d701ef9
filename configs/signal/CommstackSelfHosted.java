// commstack's beans for registration-service's "selfhosted" environment: see components/signal/registration.py.
package org.signal.registration.session;

import com.google.i18n.phonenumbers.PhoneNumberUtil;
import com.google.i18n.phonenumbers.Phonenumber;
import io.micronaut.context.annotation.Factory;
import io.micronaut.context.annotation.Requires;
import io.micronaut.context.annotation.Value;
import io.micronaut.context.event.ApplicationEventPublisher;
import io.micronaut.scheduling.annotation.Scheduled;
import jakarta.inject.Named;
import jakarta.inject.Singleton;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.stream.Collectors;
import org.signal.registration.ratelimit.LeakyBucketRateLimiterConfiguration;
import org.signal.registration.ratelimit.RateLimitExceededException;
import org.signal.registration.ratelimit.RateLimiter;
import org.signal.registration.sender.fictitious.FictitiousNumberVerificationCodeRepository;
import org.signal.registration.sender.noop.NoopFictitiousNumberVerificationCodeRepository;
import org.signal.registration.sender.noop.NoopPrescribedVerificationCodeRepository;
import org.signal.registration.sender.prescribed.PrescribedVerificationCodeRepository;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

@Factory
@Requires(env = CommstackSelfHosted.ENVIRONMENT)
public class CommstackSelfHosted {

  public static final String ENVIRONMENT = "selfhosted";

  private static final Logger logger = LoggerFactory.getLogger(CommstackSelfHosted.class);

  // Declared as the interface: a factory bean takes the annotations of its declared type, and the store's class
  // requires the dev environment.
  @Singleton
  SessionRepository sessionRepository(final ApplicationEventPublisher<SessionCompletedEvent> publisher,
      final Clock clock) {
    return new MemorySessionRepository(publisher, clock);
  }

  @Singleton
  PrescribedVerificationCodeRepository prescribedVerificationCodeRepository() {
    return new NoopPrescribedVerificationCodeRepository();
  }

  @Singleton
  FictitiousNumberVerificationCodeRepository fictitiousNumberVerificationCodeRepository() {
    return new NoopFictitiousNumberVerificationCodeRepository();
  }

  // Upstream's own per-number session limit (ratelimit/redis/RedisLeakyBucketSessionCreationRateLimiter with its
  // application.yml `rate-limits.leaky-bucket.session-creation`: 5 sessions, one back every 288 minutes, at least a
  // minute apart), kept in memory like the sessions themselves, behind the number allowlist.
  @Singleton
  @Named("session-creation")
  RateLimiter<Phonenumber.PhoneNumber> sessionCreationRateLimiter(
      @Value("${commstack.allowed-numbers:}") final String allowedNumbers,
      @Named("session-creation") final LeakyBucketRateLimiterConfiguration limit, final Clock clock) {
    final Set<String> allowed = Arrays.stream(allowedNumbers.split(","))
        .map(String::trim)
        .filter(number -> !number.isEmpty())
        .collect(Collectors.toUnmodifiableSet());
    logger.info("commstack selfhosted: {} allowed numbers (0: any verified number); per number at most {} sessions, "
        + "one more every {}, {} apart", allowed.size(), limit.maxCapacity(), limit.permitRegenerationPeriod(),
        limit.minDelay());
    return new AllowedNumbersRateLimiter(allowed, new MemoryLeakyBucket(limit, clock), clock);
  }
}

// Refuses a session for a number outside a non-empty allowlist, then applies the per-number leaky bucket.
class AllowedNumbersRateLimiter implements RateLimiter<Phonenumber.PhoneNumber> {

  private final Set<String> allowed;
  private final MemoryLeakyBucket bucket;
  private final Clock clock;

  AllowedNumbersRateLimiter(final Set<String> allowed, final MemoryLeakyBucket bucket, final Clock clock) {
    this.allowed = allowed;
    this.bucket = bucket;
    this.clock = clock;
  }

  private static String e164(final Phonenumber.PhoneNumber number) {
    return PhoneNumberUtil.getInstance().format(number, PhoneNumberUtil.PhoneNumberFormat.E164);
  }

  private boolean permits(final String number) {
    return allowed.isEmpty() || allowed.contains(number);
  }

  @Override
  public CompletableFuture<Optional<Instant>> getTimeOfNextAction(final Phonenumber.PhoneNumber number) {
    final String key = e164(number);
    return CompletableFuture.completedFuture(
        permits(key) ? Optional.of(clock.instant().plus(bucket.wait(key, false))) : Optional.empty());
  }

  @Override
  public CompletableFuture<Void> checkRateLimit(final Phonenumber.PhoneNumber number) {
    final String key = e164(number);
    if (!permits(key)) {
      return CompletableFuture.failedFuture(new RateLimitExceededException(null));
    }
    final Duration wait = bucket.wait(key, true);
    return wait.isZero()
        ? CompletableFuture.completedFuture(null)
        : CompletableFuture.failedFuture(new RateLimitExceededException(wait));
  }
}

// validate-rate-limit.lua (registration-service's Redis leaky bucket) in memory: each key holds maxCapacity permits,
// regains one every permitRegenerationPeriod, and may act at most once per minDelay.
class MemoryLeakyBucket {

  private static final int MAX_KEYS = 100_000;

  private final double capacity;
  private final long regenerationMillis;
  private final long minDelayMillis;
  private final Clock clock;
  private final Map<String, long[]> buckets = new HashMap<>();  // key -> {permits * 1000, last update millis}

  MemoryLeakyBucket(final LeakyBucketRateLimiterConfiguration limit, final Clock clock) {
    this.capacity = limit.maxCapacity();
    this.regenerationMillis = Math.max(1, limit.permitRegenerationPeriod().toMillis());
    this.minDelayMillis = limit.minDelay().toMillis();
    this.clock = clock;
  }

  // How long until `key` may act (zero: now); with `consume`, takes the permit when it may.
  synchronized Duration wait(final String key, final boolean consume) {
    final long now = clock.millis();
    final long[] state = buckets.get(key);
    final double remaining = state == null ? capacity : state[0] / 1000.0;
    final long last = state == null ? now : state[1];
    final long cooldown = state == null ? 0 : last + minDelayMillis - now;
    final double available = Math.min(capacity, remaining + (double) (now - last) / regenerationMillis);
    if (available >= 1 && cooldown <= 0) {
      if (consume) {
        if (buckets.size() >= MAX_KEYS) {
          forgetFull(now);
        }
        buckets.put(key, new long[]{Math.round((available - 1) * 1000), now});
      }
      return Duration.ZERO;
    }
    return Duration.ofMillis(Math.max((long) Math.ceil((1 - available) * regenerationMillis), cooldown));
  }

  // Buckets that have refilled hold nothing worth keeping.
  private void forgetFull(final long now) {
    buckets.entrySet().removeIf(entry ->
        entry.getValue()[0] / 1000.0 + (double) (now - entry.getValue()[1]) / regenerationMillis >= capacity);
  }
}

// Drops expired sessions, as the store's own schedule does in dev.
@Singleton
@Requires(env = CommstackSelfHosted.ENVIRONMENT)
class CommstackSessionSweeper {

  private final MemorySessionRepository repository;

  CommstackSessionSweeper(final SessionRepository repository) {
    this.repository = (MemorySessionRepository) repository;
  }

  @Scheduled(fixedRate = "10s")
  void sweep() {
    repository.removeExpiredSessions();
  }
}
