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
import java.time.Instant;
import java.util.Arrays;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.stream.Collectors;
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

  @Singleton
  @Named("session-creation")
  RateLimiter<Phonenumber.PhoneNumber> sessionCreationRateLimiter(
      @Value("${commstack.allowed-numbers:}") final String allowedNumbers, final Clock clock) {
    final Set<String> allowed = Arrays.stream(allowedNumbers.split(","))
        .map(String::trim)
        .filter(number -> !number.isEmpty())
        .collect(Collectors.toUnmodifiableSet());
    logger.info("commstack selfhosted: {} allowed numbers (0: any verified number)", allowed.size());
    return new AllowedNumbersRateLimiter(allowed, clock);
  }
}

// Refuses a session for a number outside a non-empty allowlist.
class AllowedNumbersRateLimiter implements RateLimiter<Phonenumber.PhoneNumber> {

  private final Set<String> allowed;
  private final Clock clock;

  AllowedNumbersRateLimiter(final Set<String> allowed, final Clock clock) {
    this.allowed = allowed;
    this.clock = clock;
  }

  private boolean permits(final Phonenumber.PhoneNumber number) {
    return allowed.isEmpty()
        || allowed.contains(PhoneNumberUtil.getInstance().format(number, PhoneNumberUtil.PhoneNumberFormat.E164));
  }

  @Override
  public CompletableFuture<Optional<Instant>> getTimeOfNextAction(final Phonenumber.PhoneNumber number) {
    return CompletableFuture.completedFuture(permits(number) ? Optional.of(clock.instant()) : Optional.empty());
  }

  @Override
  public CompletableFuture<Void> checkRateLimit(final Phonenumber.PhoneNumber number) {
    return permits(number)
        ? CompletableFuture.completedFuture(null)
        : CompletableFuture.failedFuture(new RateLimitExceededException(null));
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
